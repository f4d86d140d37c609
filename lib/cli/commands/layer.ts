/** `strata layer …`: import, list, inspect, remove and prune layers (see docs/layers.md). */
import type { Argv, CommandModule } from 'yargs';
import { printJson, printTable } from '../output.js';
import { formatBytes, progressFor, shortId, withBackend, type StoreArgs, type Sub } from './store-common.js';

const sub = (spec: object): Sub => spec as Sub;

export const layerCommand: CommandModule<StoreArgs, StoreArgs> = {
  command: 'layer <command>',
  describe: 'import and manage single layers',
  builder: (yargs: Argv<StoreArgs>) => yargs
    .command(sub({
      command: 'import <path>',
      describe: 'import a layer tar (plain, gzip or zstd) or a directory in overlayfs format',
      builder: (y: Argv<StoreArgs>) => y
        .positional('path', { type: 'string', demandOption: true, describe: 'tar file or directory' })
        .option('parent', { type: 'string', describe: 'stack the layer on this layer id (default: a bottom layer)' }),
      handler: async (argv: StoreArgs & { path: string; parent?: string }) => {
        const progress = progressFor(argv);
        const layer = await withBackend(argv, (b) => b.importLayer(argv.path, { parent: argv.parent, onProgress: progress.onProgress }))
          .finally(() => progress.done());
        if (argv.json) printJson(layer);
        else process.stdout.write(`${layer.chainID}\n`);
      },
    }))
    .command(sub({
      command: 'ls',
      aliases: ['list'],
      describe: 'list layers',
      handler: async (argv: StoreArgs) => {
        const layers = await withBackend(argv, (b) => b.listLayers());
        if (argv.json) return printJson(layers);
        printTable(['LAYER ID', 'DIFF ID', 'PARENT', 'DEPTH', 'SIZE', 'USED BY'], layers.map((l) => [
          shortId(l.chainID), shortId(l.diffID), shortId(l.parent), String(l.depth), l.packed ? `packed (${formatBytes(l.compressedSize)} blob)` : formatBytes(l.size),
          [...l.holders, ...l.children.map((c) => `layer:${shortId(c)}`)].join(',') || '-',
        ]));
      },
    }))
    .command(sub({
      command: 'inspect <refs..>',
      describe: 'show layer records as JSON',
      builder: (y: Argv<StoreArgs>) => y.positional('refs', { type: 'string', array: true, demandOption: true }),
      handler: async (argv: StoreArgs & { refs: string[] }) => {
        printJson(await withBackend(argv, async (b) => {
          const out = [];
          for (const ref of argv.refs) out.push(await b.inspectLayer(String(ref)));
          return out;
        }));
      },
    }))
    .command(sub({
      command: 'rm <refs..>',
      aliases: ['remove'],
      describe: 'remove layers nothing uses (fails naming the users otherwise)',
      builder: (y: Argv<StoreArgs>) => y.positional('refs', { type: 'string', array: true, demandOption: true }),
      handler: async (argv: StoreArgs & { refs: string[] }) => {
        const results = await withBackend(argv, async (b) => {
          const out = [];
          for (const ref of argv.refs) out.push(await b.removeLayer(String(ref)));
          return out;
        });
        if (argv.json) return printJson(results);
        for (const r of results) process.stdout.write(`Deleted: ${r.removed}\n`);
      },
    }))
    .command(sub({
      command: 'prune',
      describe: 'remove every layer that no image, mount or child layer uses',
      handler: async (argv: StoreArgs) => {
        const result = await withBackend(argv, (b) => b.pruneLayers());
        if (argv.json) return printJson(result);
        for (const id of result.deletedLayers) process.stdout.write(`Deleted: ${id}\n`);
      },
    }))
    .demandCommand(1, 'name a layer command'),
  handler: () => undefined,
};
