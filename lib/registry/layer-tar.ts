/**
 * Writes a stored layer (a content dir in overlayfs format) back out as an OCI layer tar, for push.
 *
 * The store keeps extracted layers, not the blobs they came in, so a layer whose original blob the registry lacks
 * is tarred again. The tar is deterministic (names sorted, numeric owners, no atime/ctime, one format), so the
 * same content always gives the same diffID and blob digest, and a second push finds it with HEAD.
 * Format: POSIX pax. A char device 0/0 (a whiteout) becomes an empty `.wh.NAME`; a dir with
 * `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry; other `trusted.overlay.*` xattrs are the store's own
 * bookkeeping and are left out; every other xattr is a `SCHILY.xattr.*` record with its raw bytes; hard links
 * within the layer are written once, then as links; mtimes keep their nanoseconds.
 */
import { createWriteStream, lstatSync, readdirSync, readlinkSync, type BigIntStats } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { constants as zlibConstants, createGzip } from 'node:zlib';
import { HashingStream, type Digest } from '../layers/digest.js';
import type { StrataSys } from '../native/index.js';

const BLOCK = 512;
const S_IFMT = 0o170000n;
const S_IFDIR = 0o040000n;
const S_IFREG = 0o100000n;
const S_IFLNK = 0o120000n;
const S_IFCHR = 0o020000n;
const S_IFBLK = 0o060000n;
const S_IFIFO = 0o010000n;

export interface ExportedLayer {
  /** sha256 of the uncompressed tar. */
  diffID: Digest;
  /** sha256 and size of the gzip blob written. */
  digest: Digest;
  size: number;
  mediaType: string;
}

/** Tars `dir` into a gzip blob at `outFile`. */
export async function exportLayerBlob(dir: string, outFile: string, sys: StrataSys, options: { level?: number; what: string }): Promise<ExportedLayer> {
  const tarHash = new HashingStream(Number.MAX_SAFE_INTEGER, `${options.what} (tar)`);
  const blobHash = new HashingStream(Number.MAX_SAFE_INTEGER, options.what);
  await pipeline(
    Readable.from(layerTar(dir, sys), { objectMode: false }),
    tarHash,
    createGzip({ level: options.level ?? zlibConstants.Z_DEFAULT_COMPRESSION }),
    blobHash,
    createWriteStream(outFile, { mode: 0o600 }),
  );
  return { diffID: tarHash.digest, digest: blobHash.digest, size: blobHash.bytes, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' };
}

interface Entry {
  name: string;
  type: '0' | '1' | '2' | '3' | '4' | '5' | '6';
  st: BigIntStats;
  mode: number;
  size: bigint;
  linkname?: string;
  xattrs?: Array<[string, Buffer]>;
}

/** The tar stream of `dir`, as Buffers. */
export async function* layerTar(dir: string, sys: StrataSys): AsyncGenerator<Buffer> {
  const links = new Map<string, string>();
  // The layer root's own metadata (mode, owner, times, xattrs) travels as "./", as GNU tar writes it.
  const rootSt = lstatSync(dir, { bigint: true });
  yield* entryBlocks({ name: './', type: '5', st: rootSt, mode: Number(rootSt.mode & 0o7777n), size: 0n, xattrs: readXattrs(sys, dir) });
  const stack: string[] = [''];
  // Depth-first, names sorted: the parent entry always comes before its children.
  while (stack.length > 0) {
    const rel = stack.pop()!;
    const full = path.join(dir, rel);
    const names = readdirSync(full).sort();
    const subdirs: string[] = [];
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const childFull = path.join(dir, childRel);
      const st = lstatSync(childFull, { bigint: true });
      const fmt = st.mode & S_IFMT;
      const mode = Number(st.mode & 0o7777n);
      const xattrs = readXattrs(sys, childFull);
      if (fmt === S_IFCHR && st.rdev === 0n) {
        yield* entryBlocks({ name: rel === '' ? `.wh.${name}` : `${rel}/.wh.${name}`, type: '0', st, mode, size: 0n });
      } else if (fmt === S_IFDIR) {
        yield* entryBlocks({ name: `${childRel}/`, type: '5', st, mode, size: 0n, xattrs });
        if (sys.lgetxattr(childFull, 'trusted.overlay.opaque')?.toString() === 'y') {
          yield* entryBlocks({ name: `${childRel}/.wh..wh..opq`, type: '0', st, mode: 0, size: 0n });
        }
        subdirs.push(childRel);
      } else if (fmt === S_IFREG) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1n ? links.get(key) : undefined;
        if (first !== undefined) {
          yield* entryBlocks({ name: childRel, type: '1', st, mode, size: 0n, linkname: first, xattrs });
          continue;
        }
        if (st.nlink > 1n) links.set(key, childRel);
        yield* entryBlocks({ name: childRel, type: '0', st, mode, size: st.size, xattrs });
        yield* fileData(childFull, st.size);
      } else if (fmt === S_IFLNK) {
        yield* entryBlocks({ name: childRel, type: '2', st, mode, size: 0n, linkname: readlinkSync(childFull), xattrs });
      } else if (fmt === S_IFCHR || fmt === S_IFBLK || fmt === S_IFIFO) {
        yield* entryBlocks({ name: childRel, type: fmt === S_IFCHR ? '3' : fmt === S_IFBLK ? '4' : '6', st, mode, size: 0n, xattrs });
      }
      // Sockets cannot be carried in a tar; like tar itself, leave them out.
    }
    // Reverse onto the stack so the smallest name is expanded first.
    for (const d of subdirs.reverse()) stack.push(d);
  }
  yield Buffer.alloc(BLOCK * 2);
}

function readXattrs(sys: StrataSys, file: string): Array<[string, Buffer]> {
  const out: Array<[string, Buffer]> = [];
  for (const name of sys.llistxattr(file).sort()) {
    if (name.startsWith('trusted.overlay.')) continue;
    const value = sys.lgetxattr(file, name);
    if (value !== null) out.push([name, value]);
  }
  return out;
}

async function* fileData(file: string, size: bigint): AsyncGenerator<Buffer> {
  const handle = await open(file, 'r');
  try {
    let left = Number(size);
    while (left > 0) {
      const want = Math.min(left, 1 << 20);
      const buf = Buffer.allocUnsafe(want);
      const { bytesRead } = await handle.read(buf, 0, want, null);
      // A stored layer never changes; if it does, the tar would lie about sizes, so stop.
      if (bytesRead === 0) throw new Error(`${file} is shorter than its size while being tarred`);
      left -= bytesRead;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
  const pad = Number(size) % BLOCK;
  if (pad !== 0) yield Buffer.alloc(BLOCK - pad);
}

function* entryBlocks(e: Entry): Generator<Buffer> {
  const pax: Array<[string, Buffer]> = [];
  const mtimeSec = e.st.mtimeNs / 1_000_000_000n;
  const mtimeNsec = e.st.mtimeNs % 1_000_000_000n;
  if (mtimeNsec !== 0n) pax.push(['mtime', Buffer.from(`${mtimeSec}.${mtimeNsec.toString().padStart(9, '0')}`)]);
  const split = splitName(e.name);
  if (split === null) pax.push(['path', Buffer.from(e.name)]);
  if (e.linkname !== undefined && (Buffer.byteLength(e.linkname) > 100 || !isAscii(e.linkname))) pax.push(['linkpath', Buffer.from(e.linkname)]);
  const octalFits = (v: bigint, width: number) => v >= 0n && v < 8n ** BigInt(width - 1);
  if (!octalFits(e.st.uid, 8)) pax.push(['uid', Buffer.from(String(e.st.uid))]);
  if (!octalFits(e.st.gid, 8)) pax.push(['gid', Buffer.from(String(e.st.gid))]);
  if (!octalFits(e.size, 12)) pax.push(['size', Buffer.from(String(e.size))]);
  for (const [name, value] of e.xattrs ?? []) pax.push([`SCHILY.xattr.${name}`, value]);
  if (pax.length > 0) {
    const body = Buffer.concat(pax.map(([k, v]) => paxRecord(k, v)));
    const base = path.posix.basename(e.name.replace(/\/$/, '')).slice(0, 80);
    yield header({ name: `PaxHeaders/${base}`, prefix: '', type: 'x', mode: 0o644, uid: 0n, gid: 0n, size: BigInt(body.length), mtime: mtimeSec });
    yield body;
    const pad = body.length % BLOCK;
    if (pad !== 0) yield Buffer.alloc(BLOCK - pad);
  }
  const [prefix, name] = split ?? ['', Buffer.from(e.name).subarray(0, 100).toString('latin1')];
  const major = (e.st.rdev >> 8n) & 0xfffn | ((e.st.rdev >> 32n) & ~0xfffn);
  const minor = (e.st.rdev & 0xffn) | ((e.st.rdev >> 12n) & ~0xffn);
  yield header({
    name, prefix, type: e.type, mode: e.mode, uid: e.st.uid, gid: e.st.gid, size: e.size, mtime: mtimeSec,
    linkname: e.linkname, devmajor: e.type === '3' || e.type === '4' ? major : 0n, devminor: e.type === '3' || e.type === '4' ? minor : 0n,
  });
}

/** ustar's name split (prefix up to 155 bytes, name up to 100, at a '/'); null when the name needs a pax path. */
function splitName(name: string): [string, string] | null {
  if (!isAscii(name)) return null;
  if (name.length <= 100) return ['', name];
  const trimmed = name.endsWith('/') ? name.slice(0, -1) : name;
  for (let i = trimmed.length - 1; i > 0; i -= 1) {
    if (trimmed[i] !== '/') continue;
    const prefix = trimmed.slice(0, i);
    const rest = name.slice(i + 1);
    if (prefix.length <= 155 && rest.length <= 100 && rest.length > 0) return [prefix, rest];
    if (prefix.length <= 155) return null;
  }
  return null;
}

function isAscii(s: string): boolean {
  return /^[\x20-\x7e]*$/.test(s);
}

function paxRecord(key: string, value: Buffer): Buffer {
  const rest = Buffer.byteLength(` ${key}=`) + value.length + 1;
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return Buffer.concat([Buffer.from(`${len} ${key}=`), value, Buffer.from('\n')]);
}

interface HeaderFields {
  name: string;
  prefix: string;
  type: string;
  mode: number;
  uid: bigint;
  gid: bigint;
  size: bigint;
  mtime: bigint;
  linkname?: string;
  devmajor?: bigint;
  devminor?: bigint;
}

function header(h: HeaderFields): Buffer {
  const buf = Buffer.alloc(BLOCK);
  buf.write(h.name, 0, 100, 'latin1');
  octal(buf, 100, 8, BigInt(h.mode));
  octal(buf, 108, 8, h.uid);
  octal(buf, 116, 8, h.gid);
  octal(buf, 124, 12, h.size);
  octal(buf, 136, 12, h.mtime < 0n ? 0n : h.mtime);
  buf.fill(0x20, 148, 156);
  buf.write(h.type, 156, 1, 'latin1');
  if (h.linkname !== undefined) buf.write(h.linkname, 157, 100, 'latin1');
  buf.write('ustar\u000000', 257, 8, 'latin1');
  octal(buf, 329, 8, h.devmajor ?? 0n);
  octal(buf, 337, 8, h.devminor ?? 0n);
  buf.write(h.prefix, 345, 155, 'latin1');
  let sum = 0;
  for (const b of buf) sum += b;
  buf.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8, 'latin1');
  return buf;
}

/** An octal field, NUL-terminated; a value that does not fit is written as 0 (pax carries it). */
function octal(buf: Buffer, offset: number, width: number, value: bigint): void {
  const fits = value >= 0n && value < 8n ** BigInt(width - 1);
  buf.write(`${(fits ? value : 0n).toString(8).padStart(width - 1, '0')}\u0000`, offset, width, 'latin1');
}
