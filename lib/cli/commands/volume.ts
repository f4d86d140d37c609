/**
 * `strata volume …`: named volumes (docs/volumes.md), served by stratad like mounts, since the daemon holds the
 * references that mounts take on them.
 */
import type { Argv, CommandModule } from 'yargs';
import { StrataError } from '../../errors.js';
import type { VolumeView } from '../../volumes/types.js';
import { printJson, printTable } from '../output.js';
import { clientFor } from './mount.js';
import { formatBytes } from './store-common.js';

interface GlobalArgs {
  json: boolean;
  socket?: string;
}

// Subcommand handlers declare their own argument shapes; yargs's overloads cannot follow them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Sub = CommandModule<GlobalArgs, any>;
const sub = (spec: object): Sub => spec as Sub;
const id = (name: string) => encodeURIComponent(name);
const strings = (values: unknown): string[] => (Array.isArray(values) ? values : values === undefined ? [] : [values]).map(String);

/** `k=v` pairs (`--label`, `--opt`) into an object; `--opt` also takes `type=…,device=…,o=…` in one flag. */
export function parsePairs(flag: string, values: string[], splitOptions: boolean): Record<string, string> {
  const result: Record<string, string> = {};
  for (const value of values) {
    const pieces = splitOptions ? value.split(/,(?=(?:type|device|o)=)/) : [value];
    for (const piece of pieces) {
      const eq = piece.indexOf('=');
      const key = eq < 0 ? piece : piece.slice(0, eq);
      if (key === '') throw new StrataError('STRATA_BAD_OPTION', `--${flag} "${value}": use key=value`);
      result[key] = eq < 0 ? '' : piece.slice(eq + 1);
    }
  }
  return result;
}

/** `--filter key=value` flags into Docker's filters object (`label=a=b` is key "label", value "a=b"). */
export function parseFilterFlags(values: string[]): Record<string, string[]> {
  const filters: Record<string, string[]> = {};
  for (const value of values) {
    const match = /^([a-z!]+)=(.*)$/.exec(value);
    if (match === null) throw new StrataError('STRATA_BAD_OPTION', `--filter "${value}": use key=value (for example label=env=prod or dangling=true)`);
    (filters[match[1]!] ??= []).push(match[2]!);
  }
  return filters;
}

const filterQuery = (filters: Record<string, string[]>) => (Object.keys(filters).length === 0 ? '' : `?filters=${encodeURIComponent(JSON.stringify(filters))}`);

export const volumeCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'volume <command>',
  describe: 'create and manage named volumes (served by stratad)',
  builder: (yargs: Argv<GlobalArgs>) => yargs
    .command(sub({
      command: 'create [name]',
      describe: 'create a volume (without a name: an anonymous one with a generated id)',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('name', { type: 'string', describe: 'volume name: [a-zA-Z0-9][a-zA-Z0-9_.-]+' })
        .option('label', { type: 'string', describe: 'key=value label (repeatable)' })
        .option('opt', { alias: 'o', type: 'string', describe: 'local driver option: type=…, device=…, o=… (repeatable)' })
        .option('driver', { alias: 'd', type: 'string', default: 'local', describe: 'volume driver (only local)' }),
      handler: async (argv: GlobalArgs & { name?: string; label?: string[]; opt?: string[]; driver: string }) => {
        const view = await clientFor(argv).request<VolumeView>('POST', '/volumes/create', {
          ...(argv.name === undefined ? {} : { Name: String(argv.name) }),
          Driver: argv.driver,
          Labels: parsePairs('label', strings(argv.label), false),
          DriverOpts: parsePairs('opt', strings(argv.opt), true),
        });
        if (argv.json) printJson(view);
        else process.stdout.write(`${view.Name}\n`);
      },
    }))
    .command(sub({
      command: 'ls',
      aliases: ['list'],
      describe: 'list volumes',
      builder: (y: Argv<GlobalArgs>) => y
        .option('filter', { alias: 'f', type: 'string', describe: 'dangling=true|false, label=k[=v], name=…, driver=local (repeatable)' })
        .option('quiet', { alias: 'q', type: 'boolean', default: false, describe: 'print only names' }),
      handler: async (argv: GlobalArgs & { filter?: string[]; quiet: boolean }) => {
        const filters = parseFilterFlags(strings(argv.filter));
        const { Volumes } = await clientFor(argv).request<{ Volumes: VolumeView[] }>('GET', `/volumes${filterQuery(filters)}`);
        if (argv.json) printJson(Volumes);
        else if (argv.quiet) for (const v of Volumes) process.stdout.write(`${v.Name}\n`);
        else printTable(['DRIVER', 'VOLUME NAME', 'USED BY'], Volumes.map((v) => [v.Driver, v.Name, v.UsedBy.join(',') || '-']));
      },
    }))
    .command(sub({
      command: 'inspect <names..>',
      describe: 'show volumes in full (JSON)',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('names', { type: 'string', array: true, demandOption: true })
        .option('size', { alias: 's', type: 'boolean', default: false, describe: 'also compute the data size (walks the volume)' }),
      handler: async (argv: GlobalArgs & { names: string[]; size: boolean }) => {
        const client = clientFor(argv);
        const views: VolumeView[] = [];
        for (const name of argv.names) views.push(await client.request<VolumeView>('GET', `/volumes/${id(String(name))}?size=${argv.size}`));
        printJson(views);
      },
    }))
    .command(sub({
      command: 'rm <names..>',
      aliases: ['remove'],
      describe: 'remove volumes and their data (refused while a mount uses them)',
      builder: (y: Argv<GlobalArgs>) => y
        .positional('names', { type: 'string', array: true, demandOption: true })
        .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'no error for volumes that do not exist' }),
      handler: async (argv: GlobalArgs & { names: string[]; force: boolean }) => {
        const client = clientFor(argv);
        const results: Array<{ Name: string; Removed: boolean }> = [];
        let failure: unknown;
        for (const name of argv.names) {
          try {
            results.push(await client.request('DELETE', `/volumes/${id(String(name))}?force=${argv.force}`));
          } catch (err) {
            // Like docker volume rm: go on with the others, report the first failure at the end.
            failure ??= err;
            if (argv.names.length > 1) process.stderr.write(`strata: ${(err as { code?: string }).code ?? 'ERROR'}: ${(err as Error).message}\n`);
          }
        }
        if (argv.json) printJson(results);
        else for (const r of results) if (r.Removed) process.stdout.write(`${r.Name}\n`);
        if (failure !== undefined) throw failure;
      },
    }))
    .command(sub({
      command: 'prune',
      describe: 'remove unused anonymous volumes (--all: unused named ones too)',
      builder: (y: Argv<GlobalArgs>) => y
        .option('all', { alias: 'a', type: 'boolean', default: false, describe: 'remove unused named volumes too' })
        .option('filter', { type: 'string', describe: 'label=k[=v] or label!=k[=v] (repeatable)' })
        .option('force', { alias: 'f', type: 'boolean', default: false, describe: 'accepted for Docker compatibility (prune never asks)' }),
      handler: async (argv: GlobalArgs & { all: boolean; filter?: string[] }) => {
        const filters = parseFilterFlags(strings(argv.filter));
        if (argv.all) filters.all = ['true'];
        const result = await clientFor(argv).request<{ VolumesDeleted: string[]; SpaceReclaimed: number }>('POST', `/volumes/prune${filterQuery(filters)}`);
        if (argv.json) return printJson(result);
        if (result.VolumesDeleted.length > 0) process.stdout.write(`Deleted Volumes:\n${result.VolumesDeleted.join('\n')}\n\n`);
        process.stdout.write(`Total reclaimed space: ${formatBytes(result.SpaceReclaimed)}\n`);
      },
    }))
    .demandCommand(1, 'name a volume command'),
  handler: () => undefined,
};
