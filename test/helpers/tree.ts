/**
 * Layer trees for the tests: build a lower layer from a declarative spec (kernel on-disk format for
 * whiteouts and opaque dirs), snapshot a directory tree, and diff two snapshots.
 *
 * Times: every entry of a built layer gets LOWER_TIME (with nanoseconds). A snapshot keeps an mtime exactly
 * when it is older than RECENT_CUTOFF_SEC and records 'recent' otherwise, so trees made at different moments
 * compare equal while nanosecond preservation of old times (copy-up, utimensat) is still checked.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { run, runOk } from './sandbox.js';

export const LOWER_TIME = '1000000000.123456789';
export const RECENT_CUTOFF_SEC = 1_500_000_000n;

export type LayerEntry =
  | { type: 'file'; content?: string | Buffer; mode?: number; uid?: number; gid?: number; xattrs?: Record<string, string>; sparseSize?: number }
  | { type: 'dir'; mode?: number; uid?: number; gid?: number; opaque?: boolean; xattrs?: Record<string, string> }
  | { type: 'symlink'; target: string }
  | { type: 'hardlink'; target: string }
  | { type: 'whiteout' }
  | { type: 'fifo'; mode?: number }
  | { type: 'chardev' | 'blockdev'; major: number; minor: number; mode?: number };

/** Relative path -> entry. Parents that are not listed are created as plain 0755 dirs. */
export type LayerSpec = Record<string, LayerEntry>;

/**
 * Paths at least this long (bytes) are never handed to a syscall whole: the kernel refuses PATH_MAX (4096) and
 * more, and tools that add a prefix ("./", a dir) need headroom. Deep trees (the long-path scenarios) are reached
 * by changing the cwd one short chunk at a time instead, which is what a process deep inside a mount does.
 */
export const SHORT_PATH_BYTES = 3000;

/** chdir to `dir` of any length: in chunks of whole components, each under SHORT_PATH_BYTES. */
export function chdirDeep(dir: string): void {
  if (Buffer.byteLength(dir) < SHORT_PATH_BYTES) {
    process.chdir(dir);
    return;
  }
  if (dir.startsWith('/')) process.chdir('/');
  let chunk = '';
  for (const part of dir.split('/').filter((c) => c !== '')) {
    if (chunk !== '' && Buffer.byteLength(chunk) + Buffer.byteLength(part) + 1 >= SHORT_PATH_BYTES) {
      process.chdir(chunk);
      chunk = '';
    }
    chunk = chunk === '' ? part : `${chunk}/${part}`;
  }
  if (chunk !== '') process.chdir(chunk);
}

/**
 * Runs `fn` with the cwd at `dir` (any depth), then puts the cwd back. Nothing else in the test process may use
 * relative paths meanwhile: the servers under test run in other processes, and the suites run ops one at a time.
 */
export async function inDir<T>(dir: string, fn: () => T | Promise<T>): Promise<T> {
  const saved = process.cwd();
  try {
    chdirDeep(dir);
    return await fn();
  } finally {
    process.chdir(saved);
  }
}

export function inDirSync<T>(dir: string, fn: () => T): T {
  const saved = process.cwd();
  try {
    chdirDeep(dir);
    return fn();
  } finally {
    process.chdir(saved);
  }
}

/** mkdir -p of `dir` of any depth (cwd-relative steps; the cwd is restored). */
function mkdirDeep(dir: string): void {
  if (Buffer.byteLength(dir) < SHORT_PATH_BYTES) {
    fs.mkdirSync(dir, { recursive: true });
    return;
  }
  inDirSync(dir.startsWith('/') ? '/' : '.', () => {
    for (const part of dir.split('/').filter((c) => c !== '')) {
      try {
        fs.mkdirSync(part);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      process.chdir(part);
    }
  });
}

/**
 * Writes `spec` under `dir` (created if needed). Entries are made in key order; hard links after their target.
 * An entry whose full path is long is made from inside its parent (see inDir), so a layer can be deeper than
 * PATH_MAX below its root; hard links must then be within one such parent.
 */
export function buildLayer(dir: string, spec: LayerSpec): void {
  fs.mkdirSync(dir, { recursive: true });
  const opaqueDirs: string[] = [];
  const xattrSets: [string, string, string][] = [];
  let deep = false;
  for (const [rel, entry] of Object.entries(spec)) {
    const full = path.join(dir, rel);
    mkdirDeep(path.dirname(full));
    const isDeep = Buffer.byteLength(full) >= SHORT_PATH_BYTES;
    deep ||= isDeep;
    // A deep entry is named relative to its parent, with the cwd there, and its xattrs are set right away.
    const make = (p: string, target: string, setXattrs: (p: string, k: string, v: string) => void) => {
      switch (entry.type) {
        case 'file': {
          if (entry.sparseSize !== undefined) {
            // Data only in the last 4 KiB: the rest is a hole.
            const fd = fs.openSync(p, 'w');
            fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, entry.sparseSize - 4096);
            fs.closeSync(fd);
          } else {
            fs.writeFileSync(p, entry.content ?? '');
          }
          fs.chmodSync(p, entry.mode ?? 0o644);
          if (entry.uid !== undefined || entry.gid !== undefined) fs.chownSync(p, entry.uid ?? 0, entry.gid ?? 0);
          for (const [k, v] of Object.entries(entry.xattrs ?? {})) setXattrs(p, k, v);
          break;
        }
        case 'dir':
          fs.mkdirSync(p, { recursive: true });
          fs.chmodSync(p, entry.mode ?? 0o755);
          if (entry.uid !== undefined || entry.gid !== undefined) fs.chownSync(p, entry.uid ?? 0, entry.gid ?? 0);
          if (entry.opaque) setXattrs(p, 'trusted.overlay.opaque', 'y');
          for (const [k, v] of Object.entries(entry.xattrs ?? {})) setXattrs(p, k, v);
          break;
        case 'symlink':
          fs.symlinkSync(entry.target, p);
          break;
        case 'hardlink':
          fs.linkSync(target, p);
          break;
        case 'whiteout':
          runOk('mknod', ['--', p, 'c', '0', '0']);
          break;
        case 'fifo':
          runOk('mkfifo', ['-m', (entry.mode ?? 0o644).toString(8), '--', p]);
          break;
        case 'chardev':
        case 'blockdev':
          runOk('mknod', ['-m', (entry.mode ?? 0o600).toString(8), '--', p, entry.type === 'chardev' ? 'c' : 'b', String(entry.major), String(entry.minor)]);
          break;
      }
    };
    const hardlinkTarget = entry.type === 'hardlink' ? path.join(dir, entry.target) : '';
    if (!isDeep) {
      // Opaque flags and xattrs go on after every entry is made, as before (one pass of setfattr).
      make(full, hardlinkTarget, (p, k, v) => (k === 'trusted.overlay.opaque' ? opaqueDirs.push(p) : xattrSets.push([p, k, v])));
    } else {
      // (No path.relative/resolve in here: they call process.cwd(), which fails once the cwd is that deep.)
      if (entry.type === 'hardlink' && path.dirname(hardlinkTarget) !== path.dirname(full)) throw new Error(`${rel}: a deep hard link must be in its target's dir`);
      inDirSync(path.dirname(full), () =>
        make(path.basename(full), path.basename(hardlinkTarget), (p, k, v) => runOk('setfattr', ['-h', '-n', k, '-v', v, '--', p], { cwd: '.' })));
    }
  }
  for (const p of opaqueDirs) runOk('setfattr', ['-h', '-n', 'trusted.overlay.opaque', '-v', 'y', p]);
  for (const [p, k, v] of xattrSets) runOk('setfattr', ['-h', '-n', k, '-v', v, p]);
  // -execdir names each entry as ./name from its own dir, so deep entries get their times too (find walks by fd).
  // find refuses -execdir under a PATH with relative entries: give touch an absolute one.
  runOk('find', [dir, ...(deep ? ['-execdir'] : ['-exec']), 'touch', '-h', '-d', `@${LOWER_TIME}`, '{}', '+'], deep ? { env: { ...process.env, PATH: '/usr/bin:/bin' } } : {});
}

export interface EntrySnapshot {
  type: 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'chardev' | 'blockdev';
  mode: string;
  uid: number;
  gid: number;
  nlink: number;
  mtime: string;
  /** Files and symlinks only (dir sizes differ legitimately between implementations). */
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: string;
  xattrs: Record<string, string>;
  /** Other paths of the snapshot that share this entry's inode (hard links), sorted. */
  linkedWith?: string[];
}

export type TreeSnapshot = Record<string, EntrySnapshot>;

function typeOf(st: fs.BigIntStats): EntrySnapshot['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'chardev';
  return 'blockdev';
}

export function normalizeTime(sec: bigint, nsec: bigint): string {
  return sec < RECENT_CUTOFF_SEC ? `${sec}.${nsec.toString().padStart(9, '0')}` : 'recent';
}

/** Parses `getfattr -d -e hex` output into `result`, keyed by keyOf(the name getfattr printed). */
function parseGetfattr(text: string, result: Map<string, Record<string, string>>, keyOf: (printed: string) => string): void {
  let current: Record<string, string> | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      current = {};
      result.set(keyOf(unescapeGetfattr(line.slice('# file: '.length))), current);
    } else if (line && current) {
      const eq = line.indexOf('=');
      if (eq > 0) current[line.slice(0, eq)] = line.slice(eq + 1);
      else current[line] = '';
    }
  }
}

/**
 * Reads every xattr under `root` with one getfattr run (plus one for root itself). Keys are relative paths ('' = root).
 * getfattr -R names entries by full relative path, so it skips (ENAMETOOLONG) entries deeper than PATH_MAX; those
 * are read by snapshotTree from inside their dir.
 */
export function readAllXattrs(root: string): Map<string, Record<string, string>> {
  const result = new Map<string, Record<string, string>>();
  const keyOf = (rel: string) => (rel === '.' ? '' : rel.replace(/^\.\//, ''));
  // Exit status 1 only means some entry could not be read (e.g. a dangling symlink); the output is still whole.
  parseGetfattr(run('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '.'], { cwd: root }).stdout, result, keyOf);
  parseGetfattr(run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '.'], { cwd: root }).stdout, result, keyOf);
  return result;
}

function unescapeGetfattr(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))).replace(/\\\\/g, '\\');
}

/**
 * Snapshot of every entry below `root` (root itself is ''). Never follows symlinks; never opens fifos/devices.
 * The walk keeps the cwd at the dir being listed and names entries relative to it, so trees of any depth work.
 */
export function snapshotTree(root: string): TreeSnapshot {
  const xattrs = readAllXattrs(root);
  const snap: TreeSnapshot = {};
  const inodes = new Map<bigint, string[]>();
  const visit = (rel: string, name: string) => {
    const st = fs.lstatSync(name, { bigint: true });
    const type = typeOf(st);
    const e: EntrySnapshot = {
      type,
      mode: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      nlink: Number(st.nlink),
      mtime: normalizeTime(st.mtimeNs / 1_000_000_000n, st.mtimeNs % 1_000_000_000n),
      xattrs: xattrs.get(rel) ?? {},
    };
    if (type === 'file') {
      e.size = Number(st.size);
      e.sha256 = crypto.createHash('sha256').update(fs.readFileSync(name)).digest('hex');
    } else if (type === 'symlink') {
      e.size = Number(st.size);
      e.target = fs.readlinkSync(name);
    } else if (type === 'chardev' || type === 'blockdev') {
      e.rdev = `${Number(st.rdev) >> 8}:${Number(st.rdev) & 0xff}`;
    }
    snap[rel] = e;
    if (type !== 'dir' && st.nlink > 1n) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), rel]);
    if (type === 'dir') {
      if (rel !== '') process.chdir(name);
      const names = fs.readdirSync('.').sort();
      // Children whose "./rel" getfattr -R could not name: read here, by their names in this dir.
      if (names.length > 0 && Buffer.byteLength(rel) + 2 + 256 >= SHORT_PATH_BYTES) {
        parseGetfattr(run('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--', ...names], { cwd: '.' }).stdout, xattrs, (n) => `${rel}/${n}`);
      }
      for (const child of names) visit(rel ? `${rel}/${child}` : child, child);
      if (rel !== '') process.chdir('..');
    }
  };
  inDirSync(root, () => visit('', '.'));
  for (const paths of inodes.values()) {
    for (const p of paths) {
      const others = paths.filter((o) => o !== p).sort();
      const entry = snap[p];
      if (entry && others.length) entry.linkedWith = others;
    }
  }
  return snap;
}

/** Human-readable differences, expected (oracle) vs actual; empty when equal. */
export function diffTrees(expected: TreeSnapshot, actual: TreeSnapshot, prefix = ''): string[] {
  const out: string[] = [];
  const names = [...new Set([...Object.keys(expected), ...Object.keys(actual)])].sort();
  for (const name of names) {
    const e = expected[name];
    const a = actual[name];
    const shown = `${prefix}${name || '.'}`;
    if (!a) { out.push(`${shown}: missing (expected ${e?.type})`); continue; }
    if (!e) { out.push(`${shown}: unexpected ${a.type}`); continue; }
    for (const key of new Set([...Object.keys(e), ...Object.keys(a)]) as Set<keyof EntrySnapshot>) {
      const ev = JSON.stringify(e[key]);
      const av = JSON.stringify(a[key]);
      if (ev !== av) out.push(`${shown}: ${key} expected ${ev} got ${av}`);
    }
  }
  return out;
}
