/**
 * `strata system prune --lost|--retained` and `strata fsck [--repair]`: store maintenance through the daemon,
 * which holds the store's lock. Nothing under lost+found or retained/ is deleted except by `system prune`.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { StrataError } from '../../errors.js';
import { DEFAULT_ROOT } from '../../api/client.js';
import type { FsckReport } from '../../store/maintenance.js';
import { printJson, printTable } from '../output.js';
import { clientFor } from './mount.js';

interface GlobalArgs {
  json: boolean;
  root?: string;
  socket?: string;
}

/**
 * fsck of a state dir no daemon serves (the daemon holds LevelDB's lock, so with one running it goes through its
 * API). Opening the stores first runs the same crash recovery as any local command or a daemon start.
 */
async function fsckLocally(rootDir: string, repair: boolean): Promise<FsckReport> {
  const exists = await stat(path.join(rootDir, 'db')).then((s) => s.isDirectory(), () => false);
  if (!exists) throw new StrataError('STRATA_NOT_FOUND', `no state dir with a metadata store at ${rootDir} (give --root, or start stratad)`);
  // The store's modules are loaded here, not at start-up: every other command (and fsck through a daemon) skips them.
  const [{ createLogger }, { fsckMounts }, { LostAndFound }, { fsckReport }, { VolumeService }, { Metastore }, { openImageServices }] = await Promise.all([
    import('../../log.js'), import('../../mounts/service.js'), import('../../store/lost-found.js'), import('../../store/maintenance.js'),
    import('../../volumes/service.js'), import('../../store/metastore.js'), import('../../images/service.js'),
  ]);
  const logger = createLogger({ name: 'strata' });
  const metastore = await Metastore.open(path.join(rootDir, 'db'), logger);
  try {
    const services = await openImageServices(metastore, rootDir, logger);
    const lostAndFound = new LostAndFound(rootDir, logger);
    const mounts = await fsckMounts(metastore, rootDir, lostAndFound, logger, repair);
    const volumes = await new VolumeService(metastore, logger, { rootDir, lostAndFound }).fsck(repair);
    return fsckReport(repair, [...mounts, ...(await services.layers.fsck(repair)), ...volumes], metastore.failed?.message ?? null);
  } finally {
    await metastore.close();
  }
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
  describe: 'check the metadata against the state dir (through the daemon, or on --root when none runs); --repair fixes what it can without losing data (exit 1 while problems remain)',
  builder: (y: Argv<GlobalArgs>) => y.option('repair', { type: 'boolean', default: false, describe: 'fix what needs no data to be given up' }),
  handler: async (argv: GlobalArgs & { repair: boolean }) => {
    const client = clientFor(argv);
    const root = path.resolve(argv.root ?? process.env.STRATA_ROOT ?? DEFAULT_ROOT);
    const daemonRoot = (await client.isReachable()) ? (await client.request<{ Root: string }>('GET', '/info')).Root : undefined;
    const report = daemonRoot !== undefined && (argv.root === undefined || daemonRoot === root)
      ? await client.request<FsckReport>('POST', `/system/fsck?repair=${argv.repair}`)
      : await fsckLocally(root, argv.repair);
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
