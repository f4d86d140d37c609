/** `strata image …`: import, list, inspect, remove and prune images (see docs/layers.md). */
import type { Argv, CommandModule } from 'yargs';
import { printJson, printTable } from '../output.js';
import { formatBytes, progressFor, shortId, withBackend, type StoreArgs, type Sub } from './store-common.js';
import { imagePullCommand, imagePushCommand } from './registry.js';

const sub = (spec: object): Sub => spec as Sub;

export const imageCommand: CommandModule<StoreArgs, StoreArgs> = {
  command: 'image <command>',
  describe: 'import, pull, push and manage images (OCI layouts, docker save archives, registries)',
  builder: (yargs: Argv<StoreArgs>) => yargs
    .command(sub({
      command: 'import <path>',
      describe: 'import an OCI image layout dir, a docker save archive or a tarred OCI layout',
      builder: (y: Argv<StoreArgs>) => y
        .positional('path', { type: 'string', demandOption: true, describe: 'layout dir or archive file' })
        .option('name', { type: 'string', describe: 'name the image repo[:tag] (default: the names in the source)' }),
      handler: async (argv: StoreArgs & { path: string; name?: string }) => {
        const progress = progressFor(argv);
        const records = await withBackend(argv, (b) => b.importImage(argv.path, { name: argv.name, onProgress: progress.onProgress }))
          .finally(() => progress.done());
        if (argv.json) printJson(records);
        else for (const r of records) process.stdout.write(`${r.id}${r.names.length > 0 ? ` ${r.names.join(' ')}` : ''}\n`);
      },
    }))
    .command(sub({
      command: 'export <refs..>',
      describe: 'write images as an OCI image layout (dir, or a tar if -o ends in .tar) or a docker save archive',
      builder: (y: Argv<StoreArgs>) => y
        .positional('refs', { type: 'string', array: true, demandOption: true })
        .option('format', { type: 'string', choices: ['oci', 'docker'], default: 'oci' })
        .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'path to create (must not exist)' })
        .option('compression', { type: 'string', choices: ['gzip', 'zstd', 'none'], describe: 'layer compression (default: gzip for oci, none for docker)' }),
      handler: async (argv: StoreArgs & { refs: string[]; format: 'oci' | 'docker'; output: string; compression?: 'gzip' | 'zstd' | 'none' }) => {
        const progress = progressFor(argv, 'export layer');
        const result = await withBackend(argv, (b) => b.exportImages(argv.refs.map(String), {
          format: argv.format, output: argv.output, compression: argv.compression, onProgress: progress.onProgress,
        })).finally(() => progress.done());
        if (argv.json) printJson(result);
        else for (const img of result.Images) process.stdout.write(`${img.ExportedId} ${img.Ref}\n`);
      },
    }))
    .command(sub({
      command: 'ls',
      aliases: ['list'],
      describe: 'list images',
      handler: async (argv: StoreArgs) => {
        const images = await withBackend(argv, (b) => b.listImages());
        if (argv.json) return printJson(images);
        printTable(['NAME', 'IMAGE ID', 'LAYERS', 'SIZE', 'CREATED'], images.flatMap((img) =>
          (img.names.length > 0 ? img.names : ['<none>']).map((name) => [name, shortId(img.id), String(img.layers), img.packedLayers > 0 ? `${formatBytes(img.size)} (+${img.packedLayers} packed)` : formatBytes(img.size), img.created ?? '-'])));
      },
    }))
    .command(sub({
      command: 'inspect <refs..>',
      describe: 'show image records as JSON',
      builder: (y: Argv<StoreArgs>) => y.positional('refs', { type: 'string', array: true, demandOption: true }),
      handler: async (argv: StoreArgs & { refs: string[] }) => {
        printJson(await withBackend(argv, async (b) => {
          const out = [];
          for (const ref of argv.refs) out.push(await b.inspectImage(String(ref)));
          return out;
        }));
      },
    }))
    .command(sub({
      command: 'rm <refs..>',
      aliases: ['remove'],
      describe: 'untag or remove images (their layers are released; "prune" deletes unused layers)',
      builder: (y: Argv<StoreArgs>) => y.positional('refs', { type: 'string', array: true, demandOption: true }),
      handler: async (argv: StoreArgs & { refs: string[] }) => {
        const results = await withBackend(argv, async (b) => {
          const out = [];
          for (const ref of argv.refs) out.push(await b.removeImage(String(ref)));
          return out;
        });
        if (argv.json) return printJson(results);
        for (const r of results) {
          for (const name of r.untagged) process.stdout.write(`Untagged: ${name}\n`);
          for (const id of r.deleted) process.stdout.write(`Deleted: ${id}\n`);
        }
      },
    }))
    .command(sub({
      command: 'prune',
      describe: 'remove untagged images, then every layer nothing uses',
      handler: async (argv: StoreArgs) => {
        const result = await withBackend(argv, (b) => b.pruneImages());
        if (argv.json) return printJson(result);
        for (const id of result.deletedImages) process.stdout.write(`Deleted image: ${id}\n`);
        for (const id of result.deletedLayers) process.stdout.write(`Deleted layer: ${id}\n`);
      },
    }))
    .command(imagePullCommand)
    .command(imagePushCommand)
    .demandCommand(1, 'name an image command'),
  handler: () => undefined,
};
