/**
 * Directories: opendir, readdir, readdirplus, releasedir, fsyncdir.
 *
 * The merged listing is taken when a handle is read from offset 0 and kept in the handle, so a listing read
 * in several requests is one consistent snapshot (offsets are indices into it). Directory handles may be
 * cached by the kernel (FOPEN_CACHE_DIR + KEEP_CACHE): every change to a directory's entries goes through
 * the kernel, which drops its cached listing whenever it changes the directory.
 */
import fs from 'node:fs';
import { StatIndex } from '../../native/index.js';
import type { FuseSession, Request } from './session.js';
import { readU64, writeU64, TWO_32 } from './codec.js';
import type { KernelNode } from './nodes.js';
import { DIRENT_BASE, ENTRY_OUT, FOPEN_CACHE_DIR, FOPEN_KEEP_CACHE, OPEN_OUT, OUT_HEADER } from './protocol.js';
import { childPath } from './entries.js';
import { O_PATH } from '../../union/util.js';

interface Listed {
  name: string;
  /** S_IF* bits. */
  type: number;
  ino: number;
}

export interface DirHandle {
  node: KernelNode;
  entries: Listed[] | undefined;
  /** An O_PATH fd of the real dir, so fstat of the open dir still answers once it is removed or renamed over. */
  pathFd: number | undefined;
}


const S_IFDIR = 0o040000;

export function opendir(s: FuseSession, req: Request): void {
  const node = s.node(req);
  if (node.path() === '') throw Object.assign(new Error('removed dir'), { code: 'ENOENT' });
  const fh = s.nextDirHandle++;
  let pathFd: number | undefined;
  try {
    pathFd = fs.openSync(s.ufs.lookup(node.path()).top.real, O_PATH | fs.constants.O_DIRECTORY);
    (node.openFds ??= new Set()).add(pathFd);
  } catch {
    pathFd = undefined; // only fstat after removal needs it; the listing itself does not
  }
  s.dirHandles.set(fh, { node, entries: undefined, pathFd });
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

function listingOf(s: FuseSession, handle: DirHandle, offset: number): Listed[] {
  if (handle.entries === undefined || offset === 0) {
    const { entries, dirIno, parentIno } = s.ufs.readdir(handle.node.path());
    handle.entries = [{ name: '.', type: S_IFDIR, ino: dirIno }, { name: '..', type: S_IFDIR, ino: parentIno }, ...entries];
  }
  return handle.entries;
}

/**
 * The state of a dir handle. A handle an earlier server of the connection gave out (session.ts resume) is
 * adopted: its listing is taken again from the node, which the journal restored.
 */
function handleOf(s: FuseSession, req: Request): DirHandle {
  const fh = readU64(req.buf, req.body);
  let handle = s.dirHandles.get(fh);
  if (handle === undefined) {
    if (Math.floor(fh / TWO_32) === s.epoch) throw Object.assign(new Error('bad dir handle'), { code: 'EBADF' });
    handle = { node: s.node(req), entries: undefined, pathFd: undefined };
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
  const handle = handleOf(s, req);
  const offset = readU64(req.buf, req.body + 8);
  const size = req.buf.readUInt32LE(req.body + 16);
  const entries = listingOf(s, handle, offset);
  let used = 0;
  for (let i = offset; i < entries.length; i++) {
    const entry = entries[i] as Listed;
    const nameBytes = Buffer.byteLength(entry.name);
    if (used + ((DIRENT_BASE + nameBytes + 7) & ~7) > size) break;
    used += writeDirent(s, OUT_HEADER + used, entry, i + 1, nameBytes);
  }
  s.send(req, used);
}

export function readdirplus(s: FuseSession, req: Request): void {
  const handle = handleOf(s, req);
  const offset = readU64(req.buf, req.body + 8);
  const size = req.buf.readUInt32LE(req.body + 16);
  const entries = listingOf(s, handle, offset);
  const dir = handle.node;
  const looked: KernelNode[] = [];
  let used = 0;
  for (let i = offset; i < entries.length; i++) {
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
        looked.push(node);
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
    used += ENTRY_OUT + writeDirent(s, off + ENTRY_OUT, entry, i + 1, nameBytes);
  }
  if (!s.send(req, used)) for (const node of looked) s.nodes.forget(node.id, 1);
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
  const p = handleOf(s, req).node.path();
  if (p !== '') s.ufs.fsyncdir(p, (req.buf.readUInt32LE(req.body + 8) & 1) !== 0);
  s.replyOk(req);
}
