/**
 * The workloads of issue 2's benchmark. Each runs real tools against a fresh mount and then checks that
 * the work was really done (a fast wrong answer must not look like a win).
 *
 * Cache state, stated per workload:
 *  - cold: page cache, dentries and inodes dropped after mounting, just before the timed command;
 *  - warm: the lower's data and metadata were read directly (not through the mount) just before mounting,
 *    so the timed command measures the filesystem's own overhead, not the disk;
 *  - none: nothing is read from the lower (pure writes).
 * Every run gets a fresh, empty upper and a fresh mount, so no run sees another's page cache or copy-ups.
 */
import { lstatSync, readdirSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { StrataError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import type { Fixture } from './fixture.js';
import { CommandRunner, shellQuote, type CommandResult } from './shell.js';

export type CacheState = 'cold' | 'warm' | 'none';
export type Metric = 'seconds' | 'MB/s';

/** Sizes of the workloads that do not come from the fixture (see run.ts for the defaults). */
export interface WorkloadSizes {
  /** Operations per process of the metadata stress, and how many processes run at once. */
  readonly stressOps: number;
  readonly stressProcesses: number;
  /** Files in the git checkout. */
  readonly gitFiles: number;
  /** Layers in the mount-time chain. */
  readonly chainLayers: number;
}

/** What a workload's one-time setup gets: it builds extra inputs under `cacheDir`, reused across runs. */
export interface SetupContext {
  readonly fixture: Fixture;
  readonly cacheDir: string;
  readonly sizes: WorkloadSizes;
  readonly runner: CommandRunner;
  readonly log: Logger;
}

export interface WorkloadContext {
  readonly fixture: Fixture;
  readonly cacheDir: string;
  readonly sizes: WorkloadSizes;
  readonly mountpoint: string;
  readonly upperdir: string;
  readonly runner: CommandRunner;
}

export type WarmContext = Omit<WorkloadContext, 'mountpoint' | 'upperdir'>;

/**
 * One row of the benchmark. A new workload is an object of this shape in a module's exported list, added to
 * the list in registry.ts; nothing else in the harness needs to change.
 */
export interface Workload {
  readonly name: string;
  readonly cache: CacheState;
  readonly metric: Metric;
  describe(fixture: Fixture, sizes: WorkloadSizes): string;
  /** Bytes moved, for MB/s workloads. */
  bytes?(fixture: Fixture): number;
  /** Builds, once per benchmark and untimed, inputs the fixture lacks (cached under cacheDir). */
  setup?(ctx: SetupContext): Promise<void>;
  /** The lower dirs to mount, top first; default: the fixture's lower. */
  lowerdirs?(ctx: WarmContext): string[];
  /** Reads what the timed command will need straight from the lower (warm workloads). */
  warm?(ctx: WarmContext): Promise<void>;
  /** Untimed work on the fresh mount just before the timed command (e.g. a first pass that fills caches). */
  prepare?(ctx: WorkloadContext): Promise<void>;
  /**
   * The timed command. Without it, the mount itself is what is timed (the mount command, until the mount is
   * live), and `check` then looks at the live mount.
   */
  run?(ctx: WorkloadContext): Promise<CommandResult>;
  /** Throws when the command's output or the upper shows the work was not done right. */
  check(ctx: WorkloadContext, result: CommandResult): void;
}

const MiB = 1024 * 1024;
const q = shellQuote;

export function fail(workload: string, message: string): never {
  throw new StrataError('STRATA_BENCH_FAILED', `${workload}: ${message}`);
}

export function expectNumber(workload: string, what: string, actual: number, expected: number): void {
  if (actual !== expected) fail(workload, `${what} is ${actual}, expected ${expected}`);
}

function ddBytes(result: CommandResult): number {
  const match = /^(\d+) bytes/m.exec(result.stderr);
  return match ? Number(match[1]) : -1;
}

/**
 * Counts the unpacked files by name: fuse-overlayfs also leaves a `.wh..wh..opq` file in every directory
 * it creates, which is its format, not a wrong result.
 */
function countSmallFiles(dir: string): number {
  let files = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) if (entry.isFile() && /^f\d+\.txt$/.test(entry.name)) files++;
  return files;
}

function readByte(path: string, offset: number): number {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(1);
    readSync(fd, buf, 0, 1, offset);
    return buf[0] ?? -1;
  } finally {
    closeSync(fd);
  }
}

export const warmTree = async ({ fixture, runner }: { fixture: Fixture; runner: CommandRunner }): Promise<void> => {
  await runner.bash(`tar -C ${q(fixture.lowerdir)} -cf - tree | cat > /dev/null`);
};

/** tar -c of the whole tree; the cold and warm variants differ only in what is cached before the run. */
function tarCreate(cache: 'cold' | 'warm'): Workload {
  const name = `tar-c-${cache}`;
  return {
    name,
    cache,
    metric: 'seconds',
    describe: (f) => `tar -c of the tree (${f.manifest.treeEntries} entries) | wc -c`,
    ...(cache === 'warm' ? { warm: warmTree } : {}),
    run: ({ mountpoint, runner }) => runner.bash(`tar -C ${q(mountpoint)} -cf - tree | wc -c`),
    check: ({ fixture }, result) => {
      const bytes = Number(result.stdout.trim());
      if (!(bytes >= fixture.manifest.treeRegularBytes)) fail(name, `tar wrote ${bytes} bytes, less than the tree's ${fixture.manifest.treeRegularBytes}`);
    },
  };
}

/** find -ls of the whole tree; warm reads the lower's metadata first. */
function findLs(cache: 'cold' | 'warm'): Workload {
  const name = `find-ls-${cache}`;
  return {
    name,
    cache,
    metric: 'seconds',
    describe: () => 'find tree -ls | wc -l',
    ...(cache === 'warm'
      ? {
          warm: async ({ fixture, runner }: { fixture: Fixture; runner: CommandRunner }) => {
            await runner.bash(`find ${q(join(fixture.lowerdir, 'tree'))} -ls > /dev/null`);
          },
        }
      : {}),
    run: ({ mountpoint, runner }) => runner.bash(`find ${q(join(mountpoint, 'tree'))} -ls | wc -l`),
    check: ({ fixture }, result) => expectNumber(name, 'lines printed', Number(result.stdout.trim()), fixture.manifest.findLines),
  };
}

/** The workloads of issue 2 (sequential I/O, tree walks, untar, rm -rf, copy-up). */
export const CORE_WORKLOADS: readonly Workload[] = [
  {
    name: 'seq-read',
    cache: 'cold',
    metric: 'MB/s',
    describe: (f) => `dd a ${f.manifest.spec.bigFileMiB} MiB lower file to /dev/null, bs=1M`,
    bytes: (f) => f.manifest.spec.bigFileMiB * MiB,
    run: ({ mountpoint, runner }) => runner.run('dd', [`if=${join(mountpoint, 'big.bin')}`, 'of=/dev/null', 'bs=1M']),
    check: ({ fixture }, result) => expectNumber('seq-read', 'bytes read', ddBytes(result), fixture.manifest.spec.bigFileMiB * MiB),
  },
  {
    name: 'seq-write',
    cache: 'none',
    metric: 'MB/s',
    describe: (f) => `dd a new ${f.manifest.spec.bigFileMiB} MiB file, bs=1M conv=fsync`,
    bytes: (f) => f.manifest.spec.bigFileMiB * MiB,
    run: ({ fixture, mountpoint, runner }) =>
      runner.run('dd', ['if=/dev/zero', `of=${join(mountpoint, 'written.bin')}`, 'bs=1M', `count=${fixture.manifest.spec.bigFileMiB}`, 'conv=fsync']),
    check: ({ fixture, upperdir }) =>
      expectNumber('seq-write', 'size of the new file in the upper', lstatSync(join(upperdir, 'written.bin')).size, fixture.manifest.spec.bigFileMiB * MiB),
  },
  tarCreate('cold'),
  tarCreate('warm'),
  findLs('cold'),
  findLs('warm'),
  {
    name: 'parallel-cat',
    cache: 'warm',
    metric: 'seconds',
    describe: (f) => `8 concurrent cats (xargs -P8) of the tree's ${f.manifest.treeRegularFiles} files | wc -c`,
    warm: warmTree,
    run: ({ fixture, mountpoint, runner }) =>
      runner.bash(`xargs -0 -P 8 -n 64 cat < ${q(fixture.readList)} | wc -c`, { cwd: join(mountpoint, 'tree') }),
    check: ({ fixture }, result) => expectNumber('parallel-cat', 'bytes read', Number(result.stdout.trim()), fixture.manifest.treeRegularBytes),
  },
  {
    name: 'untar-small',
    cache: 'warm',
    metric: 'seconds',
    describe: (f) => `tar -x of ${f.manifest.spec.smallFiles} small files (100 B - 8 KiB) into the mount`,
    warm: async ({ fixture, runner }) => {
      await runner.bash(`cat ${q(fixture.smallFilesTar)} > /dev/null`);
    },
    run: ({ fixture, mountpoint, runner }) => runner.run('tar', ['-C', mountpoint, '-xf', fixture.smallFilesTar]),
    check: ({ fixture, upperdir }) =>
      expectNumber('untar-small', 'files in the upper', countSmallFiles(join(upperdir, 'small')), fixture.manifest.spec.smallFiles),
  },
  {
    name: 'rm-rf-subtree',
    cache: 'warm',
    metric: 'seconds',
    describe: (f) => `rm -rf ${f.manifest.rmSubtree} (${f.manifest.rmSubtreeEntries} lower entries)`,
    warm: async ({ fixture, runner }) => {
      await runner.bash(`find ${q(join(fixture.lowerdir, fixture.manifest.rmSubtree))} -ls > /dev/null`);
    },
    run: ({ fixture, mountpoint, runner }) => runner.run('rm', ['-rf', join(mountpoint, fixture.manifest.rmSubtree)]),
    check: ({ fixture, mountpoint, upperdir }) => {
      const rel = fixture.manifest.rmSubtree;
      try {
        lstatSync(join(mountpoint, rel));
        fail('rm-rf-subtree', `${rel} is still visible through the mount`);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      // The kernel's format: the removed lower dir is a whiteout, a 0/0 char device, in the upper.
      const st = lstatSync(join(upperdir, rel));
      if (!st.isCharacterDevice() || st.rdev !== 0) fail('rm-rf-subtree', `${rel} in the upper is not a whiteout`);
    },
  },
  {
    name: 'copy-up',
    cache: 'warm',
    metric: 'seconds',
    describe: (f) => `first 1-byte write (dd conv=notrunc) to a ${f.manifest.spec.copyUpMiB} MiB lower file`,
    warm: async ({ fixture, runner }) => {
      await runner.bash(`cat ${q(join(fixture.lowerdir, 'copyup.bin'))} > /dev/null`);
    },
    run: ({ mountpoint, runner }) =>
      runner.run('dd', ['if=/dev/zero', `of=${join(mountpoint, 'copyup.bin')}`, 'bs=1', 'count=1', 'seek=0', 'conv=notrunc', 'status=none']),
    check: ({ fixture, upperdir }) => {
      const copied = join(upperdir, 'copyup.bin');
      const size = fixture.manifest.spec.copyUpMiB * MiB;
      expectNumber('copy-up', 'size of the copied-up file', lstatSync(copied).size, size);
      expectNumber('copy-up', 'first byte after the write', readByte(copied, 0), 0);
      expectNumber('copy-up', 'last byte of the copy', readByte(copied, size - 1), readByte(join(fixture.lowerdir, 'copyup.bin'), size - 1));
    },
  },
];
