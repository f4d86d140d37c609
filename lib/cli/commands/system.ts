/**
 * `strata system prune --lost|--retained` and `strata fsck [--repair]`: store maintenance through the daemon,
 * which holds the store's lock. Nothing under lost+found or retained/ is deleted except by `system prune`.
 */
import type { Argv, CommandModule } from 'yargs';
import type { FsckReport } from '../../store/maintenance.js';
import { StrataError } from '../../errors.js';
import { printJson, printTable } from '../output.js';
import { clientFor } from './mount.js';

interface GlobalArgs {
  json: boolean;
  socket?: string;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Sub = CommandModule<GlobalArgs, any>;

export const systemCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'system <command>',
  describe: 'state dir maintenance (see also `strata fsck`)',
  builder: (yargs: Argv<GlobalArgs>) => yargs
    .command({
      command: 'prune [names..]',
      describe: 'delete lost+found entries (--lost) and/or uppers kept by `mount rm --keep-upper` (--retained); all of them, or only the names given (see `strata info`)',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('names', { type: 'string', array: true, describe: 'entry names as `strata info` lists them' })
        .option('lost', { type: 'boolean', default: false, describe: 'delete lost+found entries' })
        .option('retained', { type: 'boolean', default: false, describe: 'delete retained uppers' }),
      handler: async (argv: GlobalArgs & { lost: boolean; retained: boolean; names?: string[] }) => {
        if (!argv.lost && !argv.retained) throw new StrataError('STRATA_BAD_OPTION', 'say what to prune: --lost (lost+found) and/or --retained (kept uppers)');
        const query = new URLSearchParams({ lost: String(argv.lost), retained: String(argv.retained) });
        for (const name of argv.names ?? []) query.append('name', String(name));
        const result = await clientFor(argv).request<{ DeletedLost: string[]; DeletedRetained: string[] }>('POST', `/system/prune?${query.toString()}`);
        if (argv.json) return printJson(result);
        for (const name of result.DeletedLost) process.stdout.write(`Deleted lost+found entry: ${name}\n`);
        for (const name of result.DeletedRetained) process.stdout.write(`Deleted retained upper: ${name}\n`);
      },
    } as unknown as Sub)
    .demandCommand(1, 'name a system command'),
  handler: () => undefined,
};

export const fsckCommand: CommandModule<GlobalArgs, GlobalArgs & { repair: boolean }> = {
  command: 'fsck',
  describe: 'check the metadata against the state dir; --repair fixes what it can without losing data (exit 1 while problems remain)',
  builder: (y: Argv<GlobalArgs>) => y.option('repair', { type: 'boolean', default: false, describe: 'fix what needs no data to be given up' }),
  handler: async (argv: GlobalArgs & { repair: boolean }) => {
    const report = await clientFor(argv).request<FsckReport>('POST', `/system/fsck?repair=${argv.repair}`);
    if (argv.json) printJson(report);
    else {
      if (report.StoreError !== null) process.stdout.write(`The metadata store refuses changes: ${report.StoreError}\n`);
      if (report.Problems.length === 0) process.stdout.write('No problems found.\n');
      else {
        printTable(['SUBJECT', 'PROBLEM', 'REPAIR'], report.Problems.map((p) => [
          p.subject, p.problem, p.repair === null ? 'none: needs a user (see docs/operations.md)' : `${p.repaired ? 'done: ' : '--repair would '}${p.repair}`,
        ]));
      }
    }
    if (report.Remaining > 0 || report.StoreError !== null) process.exitCode = 1;
  },
};
