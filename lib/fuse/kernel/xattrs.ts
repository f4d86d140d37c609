/** Extended attributes: getxattr, listxattr, setxattr, removexattr (the union hides trusted.overlay.*). */
import { fsError } from '../../errors.js';
import type { FuseSession, Request } from './session.js';
import { readName } from './codec.js';
import { doneBeforeRestart } from './entries.js';
import { OUT_HEADER, XATTR_OUT } from './protocol.js';

const ENODATA = 61;
const XATTR_CREATE = 1;

/** The node's path; for a change, the name the caller used (see FuseSession.pathForChange). */
function pathOf(s: FuseSession, req: Request, change = false): string {
  const node = s.node(req);
  const p = change ? s.pathForChange(req, node) : node.path();
  if (p === '') throw fsError('ENOENT', `node ${req.nodeid}`);
  return p;
}

/** The size-probing protocol of getxattr/listxattr: size 0 asks for the length only. */
function replyValue(s: FuseSession, req: Request, size: number, value: Buffer): void {
  if (size === 0) {
    s.out.writeUInt32LE(value.length, OUT_HEADER);
    s.out.writeUInt32LE(0, OUT_HEADER + 4);
    s.send(req, XATTR_OUT);
    return;
  }
  if (value.length > size) throw fsError('ERANGE', 'xattr buffer too small');
  s.sendWith(req, value);
}

export function getxattr(s: FuseSession, req: Request): void {
  const size = req.buf.readUInt32LE(req.body);
  const [name] = readName(req.buf, req.body + 8, req.end);
  // Mostly security.capability, asked by the kernel before writes and chowns, and mostly not set.
  const value = s.ufs.getxattrIfExists(pathOf(s, req), name);
  if (value === null) return s.replyError(req, -ENODATA);
  replyValue(s, req, size, value);
}

export function listxattr(s: FuseSession, req: Request): void {
  const size = req.buf.readUInt32LE(req.body);
  const names = s.ufs.listxattr(pathOf(s, req));
  const value = Buffer.from(names.map((n) => `${n}\0`).join(''));
  replyValue(s, req, size, value);
}

export async function setxattr(s: FuseSession, req: Request): Promise<void> {
  const { buf, body } = req;
  const size = buf.readUInt32LE(body);
  const flags = buf.readUInt32LE(body + 4);
  const [name, valueAt] = readName(buf, body + 8, req.end);
  const value = buf.subarray(valueAt, valueAt + size);
  try {
    await s.ufs.setxattr(pathOf(s, req, true), name, value, flags, { uid: req.uid, gid: req.gid, pid: req.pid });
  } catch (err) {
    // XATTR_CREATE sent again after a restart: the previous server set it (the VFS holds the inode lock).
    if (!((flags & XATTR_CREATE) !== 0 && doneBeforeRestart(req, err, 'EEXIST'))) throw err;
  }
  s.replyOk(req);
}

export async function removexattr(s: FuseSession, req: Request): Promise<void> {
  const [name] = readName(req.buf, req.body, req.end);
  try {
    await s.ufs.removexattr(pathOf(s, req, true), name);
  } catch (err) {
    // Sent again after a restart, and gone: the previous server removed it (the VFS holds the inode lock).
    if (!doneBeforeRestart(req, err, 'ENODATA')) throw err;
  }
  s.replyOk(req);
}
