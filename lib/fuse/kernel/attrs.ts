/** Attributes: getattr, setattr, readlink, statfs. */
import fs from 'node:fs';
import { fsError } from '../../errors.js';
import { sys, StatIndex, UTIME_NOW, UTIME_OMIT } from '../../native/index.js';
import type { FuseSession, Request } from './session.js';
import { readU64 } from './codec.js';
import type { KernelNode } from './nodes.js';
import {
  FATTR_ATIME, FATTR_ATIME_NOW, FATTR_FH, FATTR_GID, FATTR_MODE, FATTR_MTIME, FATTR_MTIME_NOW, FATTR_SIZE, FATTR_UID,
  FUSE_GETATTR_FH, OUT_HEADER, STATFS_OUT,
} from './protocol.js';
import { writeU64 } from './codec.js';
import { fdOfHandle } from './files.js';

const UNCHANGED = 0xffffffff;
const S_IFDIR = 0o040000;

/** An fd of an open node without a name (unlinked while open): the handle given, or any open one. */
function fdOfUnlinked(s: FuseSession, node: KernelNode, fh: number | undefined): number {
  const fd = fh === undefined ? undefined : fdOfHandle(s, fh);
  if (fd !== undefined) return fd;
  for (const open of node.openFds ?? []) return open;
  throw fsError(fh === undefined ? 'ENOENT' : 'ESTALE', `node ${node.id}`);
}

/** Fills s.statBuf with the node's attributes and returns the inode number to report. */
function statNode(s: FuseSession, node: KernelNode, fh: number | undefined): number {
  const p = node.path();
  if (p === '') {
    s.ufs.fgetattr('', fdOfUnlinked(s, node, fh), s.statBuf);
    return node.ino;
  }
  s.ufs.getattr(p, s.statBuf);
  return s.statBuf[StatIndex.ino] ?? node.ino;
}

export function getattr(s: FuseSession, req: Request): void {
  const node = s.node(req);
  const flags = req.buf.readUInt32LE(req.body);
  const fh = (flags & FUSE_GETATTR_FH) !== 0 ? readU64(req.buf, req.body + 8) : undefined;
  const ino = statNode(s, node, fh);
  s.replyAttr(req, s.statBuf, ino);
}

export async function setattr(s: FuseSession, req: Request): Promise<void> {
  const node = s.node(req);
  const { buf, body } = req;
  const valid = buf.readUInt32LE(body);
  const fh = (valid & FATTR_FH) !== 0 ? readU64(buf, body + 8) : undefined;
  const size = readU64(buf, body + 16);
  const atime = readU64(buf, body + 32);
  const mtime = readU64(buf, body + 40);
  const atimensec = buf.readUInt32LE(body + 56);
  const mtimensec = buf.readUInt32LE(body + 60);
  const mode = buf.readUInt32LE(body + 68);
  const uid = (valid & FATTR_UID) !== 0 ? buf.readUInt32LE(body + 76) : UNCHANGED;
  const gid = (valid & FATTR_GID) !== 0 ? buf.readUInt32LE(body + 80) : UNCHANGED;
  const setsAtime = (valid & (FATTR_ATIME | FATTR_ATIME_NOW)) !== 0;
  const setsMtime = (valid & (FATTR_MTIME | FATTR_MTIME_NOW)) !== 0;
  const aNsec = (valid & FATTR_ATIME_NOW) !== 0 ? UTIME_NOW : setsAtime ? atimensec : UTIME_OMIT;
  const mNsec = (valid & FATTR_MTIME_NOW) !== 0 ? UTIME_NOW : setsMtime ? mtimensec : UTIME_OMIT;
  const p = s.pathForChange(req, node);
  if (p === '') {
    // Unlinked while open: only the open file is left to change. A removed directory has only O_PATH fds
    // (kept for fstat), which cannot change it: it is gone, as on the kernel once its name is.
    if (node.type === S_IFDIR) throw fsError('ENOENT', `node ${node.id}`);
    const fd = fdOfUnlinked(s, node, fh);
    if (uid !== UNCHANGED || gid !== UNCHANGED) fs.fchownSync(fd, uid === UNCHANGED ? -1 : uid, gid === UNCHANGED ? -1 : gid);
    if ((valid & FATTR_SIZE) !== 0) s.ufs.ftruncate(fd, size);
    if ((valid & FATTR_MODE) !== 0) fs.fchmodSync(fd, mode & 0o7777);
    if (setsAtime || setsMtime) sys.futimens(fd, atime, aNsec, mtime, mNsec);
  } else {
    // The order of a real filesystem's setattr: owner first (it clears setuid bits), then size, mode, times.
    if (uid !== UNCHANGED || gid !== UNCHANGED) await s.ufs.chown(p, uid, gid);
    if ((valid & FATTR_SIZE) !== 0) {
      const open = fh === undefined ? undefined : s.openFiles.get(fh);
      if (open !== undefined) s.ufs.ftruncate(open.fd, size);
      else await s.ufs.truncate(p, size);
    }
    if ((valid & FATTR_MODE) !== 0) await s.ufs.chmod(p, mode);
    if (setsAtime || setsMtime) await s.ufs.utimens(p, atime, aNsec, mtime, mNsec);
  }
  const ino = statNode(s, node, fh);
  s.replyAttr(req, s.statBuf, ino);
}

export function readlink(s: FuseSession, req: Request): void {
  const node = s.node(req);
  const target = Buffer.from(s.ufs.readlink(node.path()));
  target.copy(s.out, OUT_HEADER);
  s.send(req, target.length);
}

export function statfs(s: FuseSession, req: Request): void {
  const st = s.ufs.statfs();
  const out = s.out;
  const o = OUT_HEADER;
  out.fill(0, o, o + STATFS_OUT);
  writeU64(out, o, st.blocks);
  writeU64(out, o + 8, st.bfree);
  writeU64(out, o + 16, st.bavail);
  writeU64(out, o + 24, st.files);
  writeU64(out, o + 32, st.ffree);
  out.writeUInt32LE(st.bsize, o + 40);
  out.writeUInt32LE(st.namemax, o + 44);
  out.writeUInt32LE(st.frsize, o + 48);
  s.send(req, STATFS_OUT);
}
