/**
 * `strata mount ...`: union mounts, served by the daemon. Every subcommand talks to the control API; mounts are
 * supervised processes, so there is no local (daemon-less) mode for them.
 */
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { DEFAULT_SOCKET, StrataClient } from '../../api/client.js';
import { parseBindFlag, parseTmpfsFlag, parseVolumeFlag } from '../../mounts/attachments.js';
import type { MountView } from '../../mounts/service.js';
import { printJson, printTable } from '../output.js';
import { mountCommitSubcommands } from './mount-commit.js';

interface GlobalArgs {
  json: boolean;
  socket?: string;
}

export function clientFor(argv: GlobalArgs): StrataClient {
  return new StrataClient(argv.socket ?? process.env.STRATA_SOCKET ?? DEFAULT_SOCKET);
}

/** Directory sources are written as paths ("/x", "./x", "../x"); anything else names an image or layer. */
export function normaliseSource(source: string): string {
  return source === '.' || source.startsWith('./') || source.startsWith('../') || source.startsWith('/') ? path.resolve(source) : source;
}

const id = (reference: string) => encodeURIComponent(reference);

// Subcommand handlers declare their own argument shapes; yargs's overloads cannot follow them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Sub = CommandModule<GlobalArgs, any>;
interface SubSpec<A> {
  command: string;
  aliases?: string[];
  describe: string;
  builder?: (y: Argv<GlobalArgs>) => Argv<unknown>;
  handler: (argv: GlobalArgs & A) => Promise<void>;
}
const sub = <A>(spec: SubSpec<A>): Sub => spec as unknown as Sub;

/**
 * Image ids the image references of these mounts name now (null: the name is gone), so that a source whose tag
 * has moved to another image since the mount was created is shown by the id it really uses.
 */
async function currentImageIds(client: StrataClient, mounts: MountView[]): Promise<Map<string, string | null>> {
  const out = new Map<string, string | null>();
  for (const source of mounts.flatMap((m) => m.Sources)) {
    if (source.kind !== 'image' || source.imageId === undefined || out.has(source.reference)) continue;
    try {
      out.set(source.reference, (await client.request<{ id: string }>('GET', `/images/${encodeURIComponent(source.reference)}/json`)).id);
    } catch (err) {
      if ((err as { code?: string }).code !== 'STRATA_NOT_FOUND') throw err;
      out.set(source.reference, null);
    }
  }
  return out;
}

function sourceLabel(source: MountView['Sources'][number], current: Map<string, string | null>): string {
  if (source.imageId === undefined || !current.has(source.reference) || current.get(source.reference) === source.imageId) return source.reference;
  return `${source.imageId.replace(/^sha256:/, '').slice(0, 12)} (was ${source.reference})`;
}

function printMounts(mounts: MountView[], current: Map<string, string | null>): void {
  printTable(['NAME', 'ID', 'STATUS', 'TARGET', 'SOURCES'], mounts.map((m) => [
    m.Name,
    m.Id.slice(0, 12),
    m.State.Status,
    m.Target,
    m.Sources.map((s) => sourceLabel(s, current)).join(','),
  ]));
}

function printOne(argv: GlobalArgs, value: { Name: string }): void {
  if (argv.json) printJson(value);
  else process.stdout.write(`${value.Name}\n`);
}

export const mountCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'mount <command>',
  describe: 'create and manage union mounts (served by stratad)',
  builder: (yargs: Argv<GlobalArgs>) => yargs
    .command(sub({
      command: 'create <sources..>',
      describe: 'mount images, layers or directories (top first) at --target with a new writable layer',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('sources', { type: 'string', array: true, demandOption: true, describe: 'image, layer id, or directory path (/x or ./x); top first' })
        .option('target', { type: 'string', demandOption: true, describe: 'directory to mount on' })
        .option('name', { type: 'string', describe: 'mount name (default: generated)' })
        .option('volume', { alias: 'v', type: 'string', describe: 'attach a named volume: NAME:/path[:ro|nocopy], or /path for a new anonymous one (repeatable)' })
        .option('bind', { type: 'string', describe: 'attach a host dir: /host/dir:/path[:ro] (repeatable)' })
        .option('tmpfs', { type: 'string', describe: 'attach a tmpfs: /path[:size=64m,mode=1777] (repeatable)' })
        .option('suid', { type: 'boolean', default: false, describe: 'honour setuid/setgid bits of the layers (RISK: any image can then hand out root; default nosuid)' })
        .option('dev', { type: 'boolean', default: false, describe: 'make device nodes of the layers usable (RISK: raw access to host devices; default nodev)' }),
      handler: async (argv: GlobalArgs & { sources: string[]; target: string; name?: string; volume?: string | string[]; bind?: string | string[]; tmpfs?: string | string[]; suid: boolean; dev: boolean }) => {
        // Repeated, not greedy, flags (no yargs array:) so that `--volume v:/x SOURCE` keeps SOURCE a source.
        const many = (value: unknown): string[] => (value === undefined ? [] : Array.isArray(value) ? value.map(String) : [String(value)]);
        const mounts = [
          ...many(argv.volume).map((v) => parseVolumeFlag(v)),
          ...many(argv.bind).map((b) => parseBindFlag(b, process.cwd())),
          ...many(argv.tmpfs).map((t) => parseTmpfsFlag(t)),
        ];
        const view = await clientFor(argv).request<MountView>('POST', '/mounts/create', {
          ...(argv.name === undefined ? {} : { Name: argv.name }),
          Target: path.resolve(argv.target),
          Sources: argv.sources.map(String).map(normaliseSource),
          ...(mounts.length === 0 ? {} : { Mounts: mounts }),
          ...(argv.suid ? { Suid: true } : {}),
          ...(argv.dev ? { Dev: true } : {}),
          // No deadline: the first mount of a pulled image extracts its layers first (a ping checks the daemon).
        }, { timeoutMs: 0 });
        printOne(argv, view);
      },
    }))
    .command(sub({
      command: 'ls',
      aliases: ['list'],
      describe: 'list mounts',
      handler: async (argv: GlobalArgs) => {
        const client = clientFor(argv);
        const mounts = await client.request<MountView[]>('GET', '/mounts/json');
        if (argv.json) printJson(mounts);
        else printMounts(mounts, await currentImageIds(client, mounts));
      },
    }))
    .command(sub({
      command: 'inspect <mounts..>',
      describe: 'show mounts in full (JSON)',
      builder: (y: Argv<GlobalArgs>) => y.positional('mounts', { type: 'string', array: true, demandOption: true }),
      handler: async (argv: GlobalArgs & { mounts: string[] }) => {
        const client = clientFor(argv);
        const views: MountView[] = [];
        for (const reference of argv.mounts) views.push(await client.request<MountView>('GET', `/mounts/${id(String(reference))}/json`));
        printJson(views);
      },
    }))
    .command(sub({
      command: 'unmount <mount>',
      aliases: ['stop'],
      describe: 'unmount, keeping the writable layer (strata mount start remounts it)',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('mount', { type: 'string', demandOption: true })
        .option('force', { type: 'boolean', default: false, describe: 'abort the FUSE connection of a busy, hung or unhealthy mount and detach it' }),
      handler: async (argv: GlobalArgs & { mount: string; force: boolean }) => {
        printOne(argv, await clientFor(argv).request<MountView>('POST', `/mounts/${id(String(argv.mount))}/stop?force=${argv.force}`));
      },
    }))
    .command(sub({
      command: 'start <mount>',
      describe: 'mount again a mount that was unmounted',
      builder: (y: Argv<GlobalArgs>) => y.positional('mount', { type: 'string', demandOption: true }),
      handler: async (argv: GlobalArgs & { mount: string }) => {
        printOne(argv, await clientFor(argv).request<MountView>('POST', `/mounts/${id(String(argv.mount))}/start`));
      },
    }))
    .command(sub({
      command: 'rm <mount>',
      aliases: ['remove'],
      describe: 'unmount and delete a mount and its writable layer',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('mount', { type: 'string', demandOption: true })
        .option('force', { type: 'boolean', default: false, describe: 'detach a busy mount lazily' })
        .option('keep-upper', { type: 'boolean', default: false, describe: 'keep the writable layer (moved under <root>/retained)' }),
      handler: async (argv: GlobalArgs & { mount: string; force: boolean; keepUpper: boolean }) => {
        const result = await clientFor(argv).request<{ Name: string; RetainedUpperDir: string | null }>(
          'DELETE', `/mounts/${id(String(argv.mount))}?force=${argv.force}&keepUpper=${argv.keepUpper}`);
        if (argv.json) printJson(result);
        else process.stdout.write(`${result.Name}${result.RetainedUpperDir ? `\nupper kept at ${result.RetainedUpperDir}` : ''}\n`);
      },
    }))
    .command(sub(mountCommitSubcommands(clientFor)[0]!))
    .command(sub(mountCommitSubcommands(clientFor)[1]!))
    .demandCommand(1, 'name a mount subcommand'),
  handler: () => undefined,
};
