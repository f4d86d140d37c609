/**
 * `strata info`: what the daemon says about itself; also the quickest way to check that it is running. It lists
 * data that no record describes (lost+found) and uppers kept by `mount rm --keep-upper`, which only
 * `strata system prune` deletes, and says so when the metadata store refuses changes.
 */
import type { CommandModule } from 'yargs';
import type { ReclaimableEntry } from '../../store/lost-found.js';
import { printJson, printTable } from '../output.js';
import { clientFor } from './mount.js';

interface GlobalArgs {
  json: boolean;
  socket?: string;
}

export const infoCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'info',
  describe: 'show the daemon\'s state dir, socket, helper and mount counts, lost+found and retained uppers',
  handler: async (argv: GlobalArgs) => {
    const info = await clientFor(argv).request<Record<string, unknown>>('GET', '/info');
    if (argv.json) return printJson(info);
    const lost = (info.LostAndFound ?? []) as ReclaimableEntry[];
    const retained = (info.RetainedUppers ?? []) as ReclaimableEntry[];
    const scalars = Object.entries(info).filter(([k]) => k !== 'LostAndFound' && k !== 'RetainedUppers');
    printTable(['KEY', 'VALUE'], [
      ...scalars.map(([k, v]) => [k, v === null ? '-' : String(v)]),
      ['LostAndFound', String(lost.length)],
      ['RetainedUppers', String(retained.length)],
    ]);
    if (lost.length > 0) {
      process.stdout.write('\nLost+found: dirs found without a record, kept in case they hold data (`strata system prune --lost` deletes them):\n');
      printTable(['NAME', 'KIND', 'SINCE', 'PATH'], lost.map((e) => [e.Name, e.Kind, e.Since, e.Path]));
    }
    if (retained.length > 0) {
      process.stdout.write('\nRetained uppers, kept by `mount rm --keep-upper` (`strata system prune --retained` deletes them):\n');
      printTable(['NAME', 'SINCE', 'PATH'], retained.map((e) => [e.Name, e.Since, e.Path]));
    }
  },
};
