/**
 * Directories: opendir, readdir, readdirplus, releasedir, fsyncdir.
 *
 * No OPENDIR (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1+): the first OPENDIR is answered ENOSYS, and from then on the
 * kernel opens directories without asking (with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR) and sends neither OPENDIR nor
 * RELEASEDIR: a tree walk costs half the requests. READDIR then carries no handle, so the listing lives on the
 * directory's node:
 *  - A listing is taken when a directory is read from offset 0 and kept on the node for the reads that continue
 *    it, until one reaches its end (LISTED_DIRS directories at most, the least recently read dropped first).
 *  - Offsets are name cookies (see Listing), not indices: a continuation is right in any listing, whoever took it.
 *  - The kernel caches listings and drops them whenever it changes the directory: every change to its entries
 *    goes through the kernel.
 *  - fstat of an open directory that was removed or renamed over needs no handle either: the node keeps an
 *    O_PATH fd of the real directory from just before it lost its name (keepRemovedDir) until it is forgotten.
 * A kernel without no-opendir gets handles as before (opendir/releasedir below); listings live on the node there too.
 */
import fs from 'node:fs';
import { StatIndex } from '../../native/index.js';
import type { FuseSession, Request } from './session.js';
import { readU64, writeU64 } from './codec.js';
import { handleEpoch } from './files.js';
import type { KernelNode } from './nodes.js';
import { DIRENT_BASE, ENTRY_OUT, FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, OPEN_OUT, OUT_HEADER } from './protocol.js';
import { childPath } from './entries.js';
import { O_PATH, openReal } from '../../union/util.js';

interface Listed {
  name: string;
  /** S_IF* bits. */
  type: number;
  ino: number;
}

export interface DirHandle {
  node: KernelNode;
  /** An O_PATH fd of the real dir, so fstat of the open dir still answers once it is removed or renamed over. */
  pathFd: number | undefined;
}


const S_IFDIR = 0o040000;

const LISTED_DIRS = 256;

export function opendir(s: FuseSession, req: Request): void {
  if (s.noOpendir) throw Object.assign(new Error('no opendir'), { code: 'ENOSYS' });
  const node = s.node(req);
  if (node.path() === '') throw Object.assign(new Error('removed dir'), { code: 'ENOENT' });
  const fh = s.nextDirHandle++;
  let pathFd: number | undefined;
  try {
    pathFd = openReal(s.ufs.lookup(node.path()).top.real, O_PATH | fs.constants.O_DIRECTORY);
    (node.openFds ??= new Set()).add(pathFd);
  } catch {
    pathFd = undefined; // only fstat after removal needs it; the listing itself does not
  }
  s.dirHandles.set(fh, { node, pathFd });
  writeU64(s.out, OUT_HEADER, fh);
  s.out.writeUInt32LE(FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, OUT_HEADER + 8);
  s.out.writeInt32LE(0, OUT_HEADER + 12);
  if (!s.send(req, OPEN_OUT)) {
    s.dirHandles.delete(fh);
    if (pathFd !== undefined) {
      node.openFds?.delete(pathFd);
      fs.closeSync(pathFd);
    }
  }
}

/**
 * A directory listing in cookie order. An entry's offset (the d_off the kernel keeps and hands back) is its
 * cookie, a 52-bit hash of its name ('.' and '..' are 1 and 2), and a read at offset X continues with the first
 * entry whose cookie is above X, in whatever listing is current. So a continuation never depends on which
 * snapshot the offset came from: the kernel's cached listings are shared by every reader of a directory, and a
 * reader's position may come from a listing another reader filled before the directory changed. Names that stay
 * are listed exactly once, however the directory changes meanwhile (as with ext4's hash-ordered offsets).
 */
interface Listing {
  entries: Listed[];
  cookies: Float64Array;
}

function takeListing(s: FuseSession, node: KernelNode): Listing {
  const { entries, dirIno, parentIno } = s.ufs.readdir(node.path());
  const keyed = entries.map((entry) => ({ entry, cookie: nameCookie(entry.name) }));
  keyed.sort((x, y) => x.cookie - y.cookie);
  const listed: Listed[] = [{ name: '.', type: S_IFDIR, ino: dirIno }, { name: '..', type: S_IFDIR, ino: parentIno }];
  const cookies = new Float64Array(keyed.length + 2);
  cookies[0] = 1;
  cookies[1] = 2;
  keyed.forEach(({ entry, cookie }, i) => {
    listed.push(entry);
    cookies[i + 2] = cookie;
  });
  return { entries: listed, cookies };
}

/** FNV-1a over the name's UTF-16 units, two ways, folded into 52 bits above the reserved cookies. */
function nameCookie(name: string): number {
  let a = 0x811c9dc5;
  let b = 0x01000193;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c, 0x5bd1e995) >>> 0;
  }
  return a * 2 ** 20 + (b >>> 12) + 3;
}

/** What a READDIR reads: the listing and the index of the first entry to send. */
interface ReadPosition {
  dir: KernelNode;
  listing: Listing;
  start: number;
}

function positionOf(s: FuseSession, req: Request): ReadPosition {
  const fh = readU64(req.buf, req.body);
  const offset = readU64(req.buf, req.body + 8);
  const dir = fh !== 0 || !s.noOpendir ? handleOf(s, req).node : s.node(req);
  // From the start: the directory may have changed since the kept listing was taken.
  if (offset === 0 || dir.listing === undefined) dir.listing = takeListing(s, dir);
  // Most recently read last; the least recently read directory gives up its listing.
  s.listedDirs.delete(dir);
  s.listedDirs.add(dir);
  if (s.listedDirs.size > LISTED_DIRS) {
    const oldest = s.listedDirs.values().next().value as KernelNode;
    s.listedDirs.delete(oldest);
    oldest.listing = undefined;
  }
  const { cookies } = dir.listing;
  let lo = 0;
  let hi = cookies.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((cookies[mid] ?? 0) <= offset) lo = mid + 1;
    else hi = mid;
  }
  return { dir, listing: dir.listing, start: lo };
}

/**
 * A read reached the end of the listing: nothing is likely to continue it, so it is not kept (a reader that does
 * continue gets a fresh listing, which is right with cookie offsets). A tree walk then holds no listings.
 */
function dropListing(s: FuseSession, dir: KernelNode): void {
  if (dir.listing === undefined) return;
  dir.listing = undefined;
  s.listedDirs.delete(dir);
}

/**
 * Where a reply must end so that it never separates two entries with the same cookie (a continuation after
 * that cookie would skip the second): `end` is the index of the first entry that did not fit.
 */
function cutBeforeSharedCookie(listing: Listing, start: number, end: number): number {
  let cut = end;
  while (cut > start + 1 && cut < listing.cookies.length && listing.cookies[cut] === listing.cookies[cut - 1]) cut--;
  return cut;
}

/**
 * Keeps an O_PATH fd of a directory that is about to lose its last name (rmdir, or a rename over it), so that
 * fstat of it through a descriptor still open answers as on kernel overlayfs. Closed when the kernel forgets it.
 */
export function keepRemovedDir(s: FuseSession, node: KernelNode | undefined): void {
  if (node === undefined || node.type !== S_IFDIR || node.keptDirFd !== undefined || !s.noOpendir) return;
  const p = node.path();
  if (p === '') return;
  try {
    node.keptDirFd = openReal(s.ufs.lookup(p).top.real, O_PATH | fs.constants.O_DIRECTORY);
    (node.openFds ??= new Set()).add(node.keptDirFd);
  } catch {
    // Gone already: nothing to keep.
  }
}

/** The kernel forgot `node`: close what keepRemovedDir kept, drop its listings. */
export function forgetDir(s: FuseSession, node: KernelNode): void {
  if (node.keptDirFd !== undefined) {
    // Out of openFds first: a node kept for file handles (nfs_export) outlives this, and a closed fd number is
    // soon another file's.
    node.openFds?.delete(node.keptDirFd);
    fs.closeSync(node.keptDirFd);
    node.keptDirFd = undefined;
  }
  if (node.listing !== undefined) {
    node.listing = undefined;
    s.listedDirs.delete(node);
  }
}

/**
 * The state of a dir handle. A handle an earlier server of the connection gave out (session.ts resume) is
 * adopted: its listing is taken again from the node, which the journal restored.
 */
function handleOf(s: FuseSession, req: Request): DirHandle {
  const fh = readU64(req.buf, req.body);
  let handle = s.dirHandles.get(fh);
  if (handle === undefined) {
    if (handleEpoch(fh) === s.epoch) throw Object.assign(new Error('bad dir handle'), { code: 'EBADF' });
    handle = { node: s.node(req), pathFd: undefined };
    s.dirHandles.set(fh, handle);
  }
  return handle;
}

/** Writes one fuse_dirent at `off`; returns its padded length. */
function writeDirent(s: FuseSession, off: number, entry: Listed, nextOffset: number, nameBytes: number): number {
  const out = s.out;
  writeU64(out, off, entry.ino);
  writeU64(out, off + 8, nextOffset);
  out.writeUInt32LE(nameBytes, off + 16);
  out.writeUInt32LE(entry.type >>> 12, off + 20);
  out.write(entry.name, off + DIRENT_BASE, nameBytes, 'utf8');
  const length = (DIRENT_BASE + nameBytes + 7) & ~7;
  out.fill(0, off + DIRENT_BASE + nameBytes, off + length);
  return length;
}

export function readdir(s: FuseSession, req: Request): void {
  const position = positionOf(s, req);
  const size = req.buf.readUInt32LE(req.body + 16);
  const { entries, cookies } = position.listing;
  const ends: number[] = [];
  let used = 0;
  let i = position.start;
  for (; i < entries.length; i++) {
    const entry = entries[i] as Listed;
    const nameBytes = Buffer.byteLength(entry.name);
    if (used + ((DIRENT_BASE + nameBytes + 7) & ~7) > size) break;
    used += writeDirent(s, OUT_HEADER + used, entry, cookies[i] ?? 0, nameBytes);
    ends.push(used);
  }
  const cut = cutBeforeSharedCookie(position.listing, position.start, i);
  if (cut < i) used = ends[cut - position.start - 1] ?? 0;
  if (used === 0) dropListing(s, position.dir);
  s.send(req, used);
}

export function readdirplus(s: FuseSession, req: Request): void {
  const position = positionOf(s, req);
  const size = req.buf.readUInt32LE(req.body + 16);
  const { dir } = position;
  const { entries, cookies } = position.listing;
  const looked: Array<KernelNode | undefined> = [];
  const ends: number[] = [];
  let used = 0;
  let i = position.start;
  for (; i < entries.length; i++) {
    const entry = entries[i] as Listed;
    const nameBytes = Buffer.byteLength(entry.name);
    const length = ENTRY_OUT + ((DIRENT_BASE + nameBytes + 7) & ~7);
    if (used + length > size) break;
    const off = OUT_HEADER + used;
    let node: KernelNode | undefined;
    let uncachedName = false;
    if (entry.name !== '.' && entry.name !== '..') {
      try {
        const p = childPath(dir, entry.name);
        s.ufs.getattr(p, s.statBuf);
        uncachedName = s.isAmbiguousName(p, s.statBuf);
        node = s.nodes.lookedUp(dir, entry.name, s.statBuf[StatIndex.ino] ?? 0, (s.statBuf[StatIndex.mode] ?? 0) & 0o170000);
      } catch {
        node = undefined; // gone meanwhile: the kernel lists the name without caching an entry for it
      }
    }
    // Node 0 (and the dot entries, which the kernel never links) carry no entry.
    s.writeEntry(off, node, s.statBuf, uncachedName);
    if (node === undefined) {
      writeU64(s.out, off + 16, 0);
      writeU64(s.out, off + 24, 0);
      s.out.writeUInt32LE(0, off + 32);
      s.out.writeUInt32LE(0, off + 36);
    }
    used += ENTRY_OUT + writeDirent(s, off + ENTRY_OUT, entry, cookies[i] ?? 0, nameBytes);
    looked.push(node);
    ends.push(used);
  }
  const cut = cutBeforeSharedCookie(position.listing, position.start, i);
  if (cut < i) {
    used = ends[cut - position.start - 1] ?? 0;
    // The entries left out are not sent: their lookups did not happen.
    for (const node of looked.splice(cut - position.start)) if (node !== undefined) s.nodes.forget(node.id, 1);
  }
  if (used === 0) dropListing(s, dir);
  if (!s.send(req, used)) for (const node of looked) if (node !== undefined) s.nodes.forget(node.id, 1);
}

export function releasedir(s: FuseSession, req: Request): void {
  const fh = readU64(req.buf, req.body);
  const handle = s.dirHandles.get(fh);
  if (handle?.pathFd !== undefined) {
    handle.node.openFds?.delete(handle.pathFd);
    fs.closeSync(handle.pathFd);
  }
  s.dirHandles.delete(fh);
  s.replyOk(req);
}

export function fsyncdir(s: FuseSession, req: Request): void {
  const p = (readU64(req.buf, req.body) === 0 && s.noOpendir ? s.node(req) : handleOf(s, req).node).path();
  if (p !== '') s.ufs.fsyncdir(p, (req.buf.readUInt32LE(req.body + 8) & 1) !== 0);
  s.replyOk(req);
}
