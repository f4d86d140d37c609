/** `strata info`: what the daemon says about itself; also the quickest way to check that it is running. */
import type { CommandModule } from 'yargs';
import { printJson, printTable } from '../output.js';
import { clientFor } from './mount.js';

interface GlobalArgs {
  json: boolean;
  socket?: string;
}

export const infoCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'info',
  describe: 'show the daemon\'s state dir, socket, helper and mount counts',
  handler: async (argv: GlobalArgs) => {
    const info = await clientFor(argv).request<Record<string, unknown>>('GET', '/info');
    if (argv.json) printJson(info);
    else printTable(['KEY', 'VALUE'], Object.entries(info).map(([k, v]) => [k, String(v)]));
  },
};
