/** `strata mount diff` and `strata mount commit` (registered by mount.ts; see docs/commit-export.md). */
import type { Argv } from 'yargs';
import type { Change } from '../../layers/diff.js';
import type { CommitResult } from '../../images/commit-image.js';
import { printJson } from '../output.js';

interface GlobalArgs {
  json: boolean;
  socket?: string;
}

interface Client {
  request<T>(method: string, urlPath: string, body?: unknown): Promise<T>;
}

export function mountCommitSubcommands(clientFor: (argv: GlobalArgs) => Client) {
  return [
    {
      command: 'diff <mount>',
      describe: 'list what the mount changed over its layers (A added, C changed, D deleted), like docker diff',
      builder: (y: Argv<GlobalArgs>) => y.positional('mount', { type: 'string', demandOption: true }),
      handler: async (argv: GlobalArgs & { mount: string }) => {
        const changes = await clientFor(argv).request<Change[]>('GET', `/mounts/${encodeURIComponent(String(argv.mount))}/changes`);
        if (argv.json) printJson(changes);
        else process.stdout.write(changes.map((c) => `${c.Kind} ${c.Path}\n`).join(''));
      },
    },
    {
      command: 'commit <mount> <ref>',
      describe: 'make a new image REF from the mount\'s image plus its changes (the mount keeps running)',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('mount', { type: 'string', demandOption: true })
        .positional('ref', { type: 'string', demandOption: true, describe: 'name of the new image, repo[:tag]' })
        .option('message', { alias: 'm', type: 'string', describe: 'comment for the image history' })
        .option('force', { type: 'boolean', default: false, describe: 'move REF from the image that has it' })
        .option('change-free', { type: 'boolean', default: false, describe: 'commit even when the mount has no changes' }),
      handler: async (argv: GlobalArgs & { mount: string; ref: string; message?: string; force: boolean; changeFree: boolean }) => {
        const result = await clientFor(argv).request<CommitResult>('POST', `/mounts/${encodeURIComponent(String(argv.mount))}/commit`, {
          Ref: String(argv.ref), Force: argv.force, ChangeFree: argv.changeFree, ...(argv.message === undefined ? {} : { Message: argv.message }),
        });
        if (argv.json) printJson(result);
        else process.stdout.write(`${result.Id} ${result.Name}\n`);
      },
    },
  ];
}
