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

/** Writes `spec` under `dir` (created if needed). Entries are made in key order; hard links after their target. */
export function buildLayer(dir: string, spec: LayerSpec): void {
  fs.mkdirSync(dir, { recursive: true });
  const opaqueDirs: string[] = [];
  const xattrSets: [string, string, string][] = [];
  for (const [rel, entry] of Object.entries(spec)) {
    const p = path.join(dir, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
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
        for (const [k, v] of Object.entries(entry.xattrs ?? {})) xattrSets.push([p, k, v]);
        break;
      }
      case 'dir':
        fs.mkdirSync(p, { recursive: true });
        fs.chmodSync(p, entry.mode ?? 0o755);
        if (entry.uid !== undefined || entry.gid !== undefined) fs.chownSync(p, entry.uid ?? 0, entry.gid ?? 0);
        if (entry.opaque) opaqueDirs.push(p);
        for (const [k, v] of Object.entries(entry.xattrs ?? {})) xattrSets.push([p, k, v]);
        break;
      case 'symlink':
        fs.symlinkSync(entry.target, p);
        break;
      case 'hardlink':
        fs.linkSync(path.join(dir, entry.target), p);
        break;
      case 'whiteout':
        runOk('mknod', [p, 'c', '0', '0']);
        break;
      case 'fifo':
        runOk('mkfifo', ['-m', (entry.mode ?? 0o644).toString(8), p]);
        break;
      case 'chardev':
      case 'blockdev':
        runOk('mknod', ['-m', (entry.mode ?? 0o600).toString(8), p, entry.type === 'chardev' ? 'c' : 'b', String(entry.major), String(entry.minor)]);
        break;
    }
  }
  for (const p of opaqueDirs) runOk('setfattr', ['-h', '-n', 'trusted.overlay.opaque', '-v', 'y', p]);
  for (const [p, k, v] of xattrSets) runOk('setfattr', ['-h', '-n', k, '-v', v, p]);
  runOk('find', [dir, '-exec', 'touch', '-h', '-d', `@${LOWER_TIME}`, '{}', '+']);
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

/** Reads every xattr under `root` with one getfattr run (plus one for root itself). Keys are relative paths ('' = root). */
export function readAllXattrs(root: string): Map<string, Record<string, string>> {
  const result = new Map<string, Record<string, string>>();
  const parse = (text: string) => {
    let current: Record<string, string> | undefined;
    for (const line of text.split('\n')) {
      if (line.startsWith('# file: ')) {
        const rel = unescapeGetfattr(line.slice('# file: '.length));
        const key = rel === '.' ? '' : rel.replace(/^\.\//, '');
        current = {};
        result.set(key, current);
      } else if (line && current) {
        const eq = line.indexOf('=');
        if (eq > 0) current[line.slice(0, eq)] = line.slice(eq + 1);
        else current[line] = '';
      }
    }
  };
  // Exit status 1 only means some entry could not be read (e.g. a dangling symlink); the output is still whole.
  parse(run('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '.'], { cwd: root }).stdout);
  parse(run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '.'], { cwd: root }).stdout);
  return result;
}

function unescapeGetfattr(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))).replace(/\\\\/g, '\\');
}

/** Snapshot of every entry below `root` (root itself is ''). Never follows symlinks; never opens fifos/devices. */
export function snapshotTree(root: string): TreeSnapshot {
  const xattrs = readAllXattrs(root);
  const snap: TreeSnapshot = {};
  const inodes = new Map<bigint, string[]>();
  const walk = (rel: string) => {
    const abs = rel ? path.join(root, rel) : root;
    const st = fs.lstatSync(abs, { bigint: true });
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
      e.sha256 = crypto.createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    } else if (type === 'symlink') {
      e.size = Number(st.size);
      e.target = fs.readlinkSync(abs);
    } else if (type === 'chardev' || type === 'blockdev') {
      e.rdev = `${Number(st.rdev) >> 8}:${Number(st.rdev) & 0xff}`;
    }
    snap[rel] = e;
    if (type !== 'dir' && st.nlink > 1n) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), rel]);
    if (type === 'dir') {
      for (const name of fs.readdirSync(abs).sort()) walk(rel ? `${rel}/${name}` : name);
    }
  };
  walk('');
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
