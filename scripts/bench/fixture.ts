/**
 * The benchmark's input, built once and reused: a lower dir holding a capped copy of a real tree plus
 * two big files, and a tar of small files to unpack into the mounts.
 *
 * Layout of a fixture dir (named by its parameters, so different sizes never mix):
 *   lower/tree/...       copy of the source tree (e.g. /usr/share), at most `maxFiles` non-directories
 *   lower/big.bin        random data, read sequentially
 *   lower/copyup.bin     random data, written once to force a copy-up
 *   small-files.tar      `smallFiles` small files under small/, unpacked by the untar workload
 *   read-list            NUL-separated paths (relative to lower/tree) of every regular file
 *   manifest.json        what was built, and the expected results the workloads are checked against
 *
 * It is built in a staging dir and renamed into place, so a fixture dir either is complete or does not exist;
 * staging dirs left by an interrupted build are removed before the next build.
 */
import { lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { isErrno, StrataError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { CommandRunner, shellQuote } from './shell.js';

export interface FixtureSpec {
  /** The real tree copied into the lower. */
  readonly source: string;
  readonly maxFiles: number;
  readonly bigFileMiB: number;
  readonly copyUpMiB: number;
  readonly smallFiles: number;
}

export interface FixtureManifest {
  readonly spec: FixtureSpec;
  /** Entries under lower/tree including itself, as `find tree` counts them. */
  readonly treeEntries: number;
  readonly treeRegularFiles: number;
  readonly treeRegularBytes: number;
  /** Path relative to lower/ of the subtree the rm -rf workload removes. */
  readonly rmSubtree: string;
  readonly rmSubtreeEntries: number;
  /** Lines `find -ls` prints for lower/tree: the find workload must print as many through each mount. */
  readonly findLines: number;
}

export interface Fixture {
  readonly dir: string;
  readonly lowerdir: string;
  readonly smallFilesTar: string;
  readonly readList: string;
  readonly manifest: FixtureManifest;
}

const MiB = 1024 * 1024;

export function fixtureKey(spec: FixtureSpec): string {
  const sourceName = spec.source.replace(/^\/+|\/+$/g, '').replaceAll('/', '-') || 'root';
  return `${sourceName}-${spec.maxFiles}f-${spec.bigFileMiB}m-${spec.copyUpMiB}m-${spec.smallFiles}s`;
}

export async function loadOrBuildFixture(cacheDir: string, spec: FixtureSpec, runner: CommandRunner, log: Logger): Promise<Fixture> {
  const key = fixtureKey(spec);
  const dir = join(cacheDir, key);
  mkdirSync(cacheDir, { recursive: true });
  removeOrphanStaging(cacheDir, key, log);
  if (!existsSync(join(dir, 'manifest.json'))) {
    const staging = join(cacheDir, `${key}.staging-${process.pid}`);
    log.info({ source: spec.source, fixture: dir }, 'building the benchmark fixture (once; reused by later runs)');
    try {
      await buildFixture(staging, spec, runner, log);
      try {
        renameSync(staging, dir);
      } catch (err) {
        // Another benchmark built the same fixture meanwhile: theirs is as good as ours (ours is removed below).
        if (!(isErrno(err, 'ENOTEMPTY', 'EEXIST') && existsSync(join(dir, 'manifest.json')))) throw err;
      }
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as FixtureManifest;
  return {
    dir,
    lowerdir: join(dir, 'lower'),
    smallFilesTar: join(dir, 'small-files.tar'),
    readList: join(dir, 'read-list'),
    manifest,
  };
}

/** Staging dirs whose builder process is gone are leftovers of an interrupted build. */
function removeOrphanStaging(cacheDir: string, key: string, log: Logger): void {
  for (const name of readdirSync(cacheDir)) {
    const match = new RegExp(`^${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.staging-(\\d+)$`).exec(name);
    if (!match || isProcessAlive(Number(match[1]))) continue;
    log.info({ dir: join(cacheDir, name) }, 'removing an interrupted fixture build');
    rmSync(join(cacheDir, name), { recursive: true, force: true });
  }
}

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

interface TreeEntry {
  readonly path: string;
  readonly isDir: boolean;
  readonly isFile: boolean;
  readonly size: number;
}

/**
 * Depth-first, name-sorted walk of `source`, staying on its filesystem, that stops after `maxFiles`
 * non-directories. Directories are listed before their contents, so every kept file has its parents kept.
 */
function walkCapped(source: string, maxFiles: number): TreeEntry[] {
  const rootDev = statSync(source).dev;
  const entries: TreeEntry[] = [];
  let nonDirs = 0;
  const visit = (rel: string): void => {
    const names = readdirSync(join(source, rel)).sort();
    for (const name of names) {
      if (nonDirs >= maxFiles) return;
      const childRel = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(source, childRel));
      if (st.isDirectory()) {
        if (st.dev !== rootDev) continue;
        entries.push({ path: childRel, isDir: true, isFile: false, size: 0 });
        visit(childRel);
      } else if (st.isFile() || st.isSymbolicLink()) {
        // Sockets, fifos and devices are not what a container image tree is made of; leave them out.
        entries.push({ path: childRel, isDir: false, isFile: st.isFile(), size: st.isFile() ? st.size : 0 });
        nonDirs++;
      }
    }
  };
  visit('');
  return entries;
}

/** The subtree to rm -rf: the directory whose entry count is closest to a quarter of the tree, capped at 10k. */
function chooseRmSubtree(entries: readonly TreeEntry[]): { path: string; entries: number } {
  const counts = new Map<string, number>();
  for (const entry of entries) {
    const parts = entry.path.split('/');
    for (let depth = 1; depth <= parts.length; depth++) {
      const prefix = parts.slice(0, depth).join('/');
      if (depth === parts.length && !entry.isDir) break;
      counts.set(prefix, (counts.get(prefix) ?? 0) + 1);
    }
  }
  const target = Math.min(10_000, Math.max(1, Math.floor(entries.length / 4)));
  let best: { path: string; entries: number } | undefined;
  for (const [path, count] of counts) {
    if (!best || Math.abs(count - target) < Math.abs(best.entries - target)) best = { path, entries: count };
  }
  if (!best) throw new StrataError('STRATA_BAD_DIR', 'the source tree has no subdirectory to remove in the rm -rf workload');
  return best;
}

async function buildFixture(staging: string, spec: FixtureSpec, runner: CommandRunner, log: Logger): Promise<void> {
  rmSync(staging, { recursive: true, force: true });
  const lower = join(staging, 'lower');
  const tree = join(lower, 'tree');
  mkdirSync(tree, { recursive: true });

  const entries = walkCapped(spec.source, spec.maxFiles);
  if (entries.length === 0) throw new StrataError('STRATA_BAD_DIR', `the source tree ${spec.source} is empty`);
  const copyList = join(staging, 'copy-list');
  writeFileSync(copyList, entries.map((e) => `${e.path}\0`).join(''));
  // tar keeps owners, modes, times, symlinks and hard links as they are in the real tree.
  await runner.bash(
    `tar -C ${shellQuote(spec.source)} --null --no-recursion -T ${shellQuote(copyList)} -cf - | tar -C ${shellQuote(tree)} -xpf -`,
  );
  rmSync(copyList);

  const regular = entries.filter((e) => e.isFile);
  writeFileSync(join(staging, 'read-list'), regular.map((e) => `${e.path}\0`).join(''));

  log.info({ bigFileMiB: spec.bigFileMiB, copyUpMiB: spec.copyUpMiB }, 'writing the big files');
  await runner.run('dd', ['if=/dev/urandom', `of=${join(lower, 'big.bin')}`, 'bs=1M', `count=${spec.bigFileMiB}`, 'status=none']);
  await runner.run('dd', ['if=/dev/urandom', `of=${join(lower, 'copyup.bin')}`, 'bs=1M', `count=${spec.copyUpMiB}`, 'status=none']);

  writeSmallFiles(join(staging, 'small-src'), spec.smallFiles);
  await runner.run('tar', ['-C', join(staging, 'small-src'), '-cf', join(staging, 'small-files.tar'), 'small']);
  rmSync(join(staging, 'small-src'), { recursive: true });

  const rm = chooseRmSubtree(entries);
  const findLines = Number((await runner.bash(`find ${shellQuote(tree)} -ls | wc -l`)).stdout.trim());
  const manifest: FixtureManifest = {
    spec,
    treeEntries: entries.length + 1,
    treeRegularFiles: regular.length,
    treeRegularBytes: regular.reduce((sum, e) => sum + e.size, 0),
    rmSubtree: `tree/${rm.path}`,
    rmSubtreeEntries: rm.entries,
    findLines,
  };
  await runner.run('sync', ['-f', staging]);
  writeFileSync(join(staging, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  log.info({ entries: manifest.treeEntries, bytes: manifest.treeRegularBytes, rmSubtree: manifest.rmSubtree }, 'fixture built');
}

/** 100 files per directory, sizes spread over 100 B – 8 KiB like a source tree; content is deterministic. */
function writeSmallFiles(root: string, count: number): void {
  const filesPerDir = 100;
  let seed = 0x9e3779b9;
  const next = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return seed >>> 0;
  };
  const pattern = Buffer.alloc(8192);
  for (let i = 0; i < pattern.length; i++) pattern[i] = 32 + (next() % 95);
  for (let i = 0; i < count; i++) {
    const dir = join(root, 'small', `d${String(Math.floor(i / filesPerDir)).padStart(4, '0')}`);
    if (i % filesPerDir === 0) mkdirSync(dir, { recursive: true });
    const size = 100 + (next() % 8092);
    const start = next() % (pattern.length - size);
    writeFileSync(join(dir, `f${String(i % filesPerDir).padStart(3, '0')}.txt`), pattern.subarray(start, start + size));
  }
}

export function describeFixture(fixture: Fixture): string {
  const m = fixture.manifest;
  return `${basename(fixture.dir)}: ${m.treeEntries} entries, ${(m.treeRegularBytes / MiB).toFixed(0)} MiB in lower/tree`;
}
