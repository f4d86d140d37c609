/**
 * Name operations: lookup, forget, and everything that creates, removes or renames a name. Each one keeps
 * the node table in step with what it told the kernel (see nodes.ts).
 */
import { fsError } from '../../errors.js';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, StatIndex } from '../../native/index.js';
import type { Caller } from '../../union/super.js';
import { joinRel } from '../../union/util.js';
import type { FuseSession, Request } from './session.js';
import { readName, readU64 } from './codec.js';
import type { KernelNode } from './nodes.js';
import { ENTRY_OUT, OPEN_OUT, OUT_HEADER } from './protocol.js';
import { openFile, releaseOpen, writeOpenOut } from './files.js';
import { forgetDir, keepRemovedDir } from './dirs.js';

export function childPath(parent: KernelNode, name: string): string {
  const parentPath = parent.path();
  if (parentPath === '') throw fsError('ENOENT', name);
  return joinRel(parentPath, name);
}

const O_CREAT = 0o100;
const O_EXCL = 0o200;

function callerOf(req: Request, umask?: number): Caller {
  return { uid: req.uid, gid: req.gid, pid: req.pid, umask };
}

function isNotFound(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'ENOENT';
}

export function lookup(s: FuseSession, req: Request): void {
  const [name] = readName(req.buf, req.body, req.end);
  // Path walks resolve "." and ".." in the kernel; only export support sends them (see lookupById).
  if (name === '.' || name === '..') return lookupById(s, req, name);
  const parent = s.node(req);
  const p = childPath(parent, name);
  // A name that does not exist is cached by the kernel as a negative entry: only this server creates names.
  // The common miss is answered without an error object (its stack trace would cost more than the lookup).
  let exists: boolean;
  try {
    exists = s.ufs.getattrIfExists(p, s.statBuf);
  } catch (err) {
    if (isNotFound(err)) {
      s.noteLookup(req, parent, name, 0);
      return s.replyNegativeEntry(req);
    }
    throw err;
  }
  if (!exists) {
    s.noteLookup(req, parent, name, 0);
    return s.replyNegativeEntry(req);
  }
  const node = s.replyEntry(req, parent, name, s.statBuf, s.isAmbiguousName(p, s.statBuf));
  s.noteLookup(req, parent, name, node.id);
}

/**
 * LOOKUP(node, ".") and LOOKUP(node, ".."): the kernel's export support asking for a node by id.
 * "." comes from open_by_handle_at of a handle whose inode the kernel no longer caches: the answer must be that
 * very node (same id, generation 0), live or retained after a FORGET (nodes.ts). ".." reconnects a directory
 * reached by handle to its parent (the kernel then reads the parent to find the name, and looks it up).
 * The node's path must still hold the inode it names (same st_ino and type), else ESTALE: a handle may go stale,
 * but it never opens another file. ESTALE is also what the kernel makes of ENOENT here.
 */
function lookupById(s: FuseSession, req: Request, name: '.' | '..'): void {
  let node: KernelNode | undefined;
  if (name === '.') {
    node = s.nodes.known(req.nodeid);
  } else {
    const child = s.nodes.get(req.nodeid);
    const parent = child === s.nodes.root ? child : child?.aliases[0]?.parent;
    // The parent object may be a restore-time placeholder or a dropped node: only a known one is answered.
    if (parent !== undefined && s.nodes.known(parent.id) === parent) node = parent;
  }
  if (node === undefined) throw fsError('ESTALE', `node ${req.nodeid} ${name}`);
  const p = node.path();
  let exists = false;
  try {
    exists = p !== '' && s.ufs.getattrIfExists(p, s.statBuf);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (!exists || s.statBuf[StatIndex.ino] !== node.ino || ((s.statBuf[StatIndex.mode] ?? 0) & 0o170000) !== node.type) {
    throw fsError('ESTALE', `node ${node.id} ${p}`);
  }
  s.replyNodeEntry(req, node, s.statBuf);
}

export function forget(s: FuseSession, req: Request): void {
  const dropped = s.nodes.forget(req.nodeid, readU64(req.buf, req.body));
  if (dropped !== undefined) forgetDir(s, dropped);
}

export function batchForget(s: FuseSession, req: Request): void {
  const { buf, body } = req;
  const count = buf.readUInt32LE(body);
  for (let i = 0, off = body + 8; i < count && off + 16 <= req.end; i++, off += 16) {
    const dropped = s.nodes.forget(readU64(buf, off), readU64(buf, off + 8));
    if (dropped !== undefined) forgetDir(s, dropped);
  }
}

/**
 * True when a request the kernel sent again after a server restart (FUSE_NOTIFY_RESEND) fails only because the
 * dead server had already done it: the name (or xattr) it creates exists, or the one it removes is gone. The
 * caller's syscall still holds the directory's (or inode's) lock in the kernel, so nobody else can have changed
 * that name since. (RENAME_EXCHANGE cannot be told apart this way: see exchangeDoneBeforeRestart.)
 */
export function doneBeforeRestart(req: Request, err: unknown, code: 'EEXIST' | 'ENOENT' | 'ENODATA'): boolean {
  return req.resent && (err as { code?: string } | null)?.code === code;
}

/** Runs a change; a resent request that the previous server already made counts as made. */
async function change(req: Request, work: () => Promise<unknown>, doneCode: 'EEXIST' | 'ENOENT'): Promise<void> {
  try {
    await work();
  } catch (err) {
    if (!doneBeforeRestart(req, err, doneCode)) throw err;
  }
}

/** After a successful creation: answer with the new name's entry. */
function replyCreated(s: FuseSession, req: Request, parent: KernelNode, name: string, p: string): void {
  s.ufs.getattr(p, s.statBuf);
  s.replyEntry(req, parent, name, s.statBuf);
}

export async function mknod(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const { buf, body } = req;
  const mode = buf.readUInt32LE(body);
  const rdev = buf.readUInt32LE(body + 4);
  const [name] = readName(buf, body + 16, req.end);
  const p = childPath(parent, name);
  await change(req, () => s.ufs.mknod(p, mode, rdev, callerOf(req, buf.readUInt32LE(body + 8))), 'EEXIST');
  replyCreated(s, req, parent, name, p);
}

export async function mkdir(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const { buf, body } = req;
  const mode = buf.readUInt32LE(body);
  const [name] = readName(buf, body + 8, req.end);
  const p = childPath(parent, name);
  await change(req, () => s.ufs.mkdir(p, mode, callerOf(req, buf.readUInt32LE(body + 4))), 'EEXIST');
  replyCreated(s, req, parent, name, p);
}

export async function symlink(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const [name, next] = readName(req.buf, req.body, req.end);
  const [target] = readName(req.buf, next, req.end);
  const p = childPath(parent, name);
  await change(req, () => s.ufs.symlink(target, p, callerOf(req)), 'EEXIST');
  replyCreated(s, req, parent, name, p);
}

export async function link(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const oldNode = s.nodes.get(readU64(req.buf, req.body));
  if (oldNode === undefined) throw fsError('ESTALE', 'link source');
  const [name] = readName(req.buf, req.body + 8, req.end);
  const existing = s.pathForChange(req, oldNode);
  if (existing === '') throw fsError('ENOENT', name);
  const p = childPath(parent, name);
  await change(req, () => s.ufs.link(existing, p), 'EEXIST');
  replyCreated(s, req, parent, name, p);
}

export async function create(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const { buf, body } = req;
  const flags = buf.readUInt32LE(body);
  const mode = buf.readUInt32LE(body + 4);
  const [name] = readName(buf, body + 16, req.end);
  const p = childPath(parent, name);
  let fd: number;
  try {
    fd = await s.ufs.create(p, mode, flags, callerOf(req, buf.readUInt32LE(body + 8)));
  } catch (err) {
    if (!doneBeforeRestart(req, err, 'EEXIST')) throw err;
    fd = await s.ufs.open(p, flags & ~(O_CREAT | O_EXCL));
  }
  let node: KernelNode;
  try {
    s.ufs.getattr(p, s.statBuf);
    node = s.nodes.lookedUp(parent, name, s.statBuf[StatIndex.ino] ?? 0, (s.statBuf[StatIndex.mode] ?? 0) & 0o170000);
  } catch (err) {
    s.ufs.release(fd);
    throw err;
  }
  const open = openFile(s, node, fd, flags);
  s.writeEntry(OUT_HEADER, node, s.statBuf);
  writeOpenOut(s, OUT_HEADER + ENTRY_OUT, open);
  if (!s.send(req, ENTRY_OUT + OPEN_OUT)) {
    s.nodes.forget(node.id, 1);
    // The kernel never saw the open: nobody will release it.
    releaseOpen(s, open.fh);
  }
}

export async function unlink(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const [name] = readName(req.buf, req.body, req.end);
  await change(req, () => s.ufs.unlink(childPath(parent, name)), 'ENOENT');
  s.nodes.removeAlias(parent, name);
  s.replyOk(req);
}

export async function rmdir(s: FuseSession, req: Request): Promise<void> {
  const parent = s.node(req);
  const [name] = readName(req.buf, req.body, req.end);
  keepRemovedDir(s, s.nodes.child(parent, name));
  await change(req, () => s.ufs.rmdir(childPath(parent, name)), 'ENOENT');
  s.nodes.removeAlias(parent, name);
  s.replyOk(req);
}

/**
 * A resent RENAME_EXCHANGE finds no error to tell it was done (doing it again swaps back). Two signs instead: the
 * journal keeps the unique of the last exchange made, stored between the swap on disk and its node record; and a
 * swap on disk that the node table never heard of shows as the two names' inode numbers crossed, which the table
 * is then brought to. The caller holds both directories' locks, so nothing else moved either name.
 */
function exchangeDoneBeforeRestart(s: FuseSession, req: Request, parent: KernelNode, name: string, newParent: KernelNode, newName: string): boolean {
  const a = s.nodes.child(parent, name);
  const b = s.nodes.child(newParent, newName);
  const crossed = a !== undefined && b !== undefined && a.ino !== b.ino &&
    s.ufs.lookup(childPath(parent, name)).ino === b.ino && s.ufs.lookup(childPath(newParent, newName)).ino === a.ino;
  if (crossed) s.nodes.exchanged(parent, name, newParent, newName, req.unique);
  return crossed || s.nodes.journal?.lastExchange === req.unique;
}

async function renameCommon(s: FuseSession, req: Request, newDirId: number, flags: number, namesAt: number): Promise<void> {
  const parent = s.node(req);
  const newParent = s.nodes.get(newDirId);
  if (newParent === undefined) throw fsError('ESTALE', 'rename target dir');
  const [name, next] = readName(req.buf, namesAt, req.end);
  const [newName] = readName(req.buf, next, req.end);
  // Kernel overlayfs refuses RENAME_WHITEOUT (it is for overlayfs's own use on the upper layer).
  if ((flags & RENAME_WHITEOUT) !== 0 || (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) !== 0) throw fsError('EINVAL', name);
  const from = childPath(parent, name);
  const to = childPath(newParent, newName);
  if ((flags & RENAME_EXCHANGE) !== 0) {
    if ((flags & RENAME_NOREPLACE) !== 0) throw fsError('EINVAL', name);
    if (req.resent && exchangeDoneBeforeRestart(s, req, parent, name, newParent, newName)) return s.replyOk(req);
    await s.ufs.exchange(from, to);
    s.nodes.exchanged(parent, name, newParent, newName, req.unique);
    return s.replyOk(req);
  }
  if ((flags & RENAME_NOREPLACE) !== 0) {
    // The kernel checked the dentry, but a name it has not looked up yet is only known here.
    let exists = true;
    try {
      s.ufs.lookup(to);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      exists = false;
    }
    if (exists) {
      // Resent after a restart, and the source is gone: the previous server made this rename.
      if (req.resent && s.ufs.getattrIfExists(from, s.statBuf) === false) {
        if (s.nodes.child(parent, name) !== undefined) s.nodes.renamed(parent, name, newParent, newName);
        return s.replyOk(req);
      }
      throw fsError('EEXIST', to);
    }
  }
  const source = s.nodes.child(parent, name);
  const replaced = s.nodes.child(newParent, newName);
  const sameInode = source !== undefined && source === replaced;
  if (!sameInode) keepRemovedDir(s, replaced);
  try {
    await s.ufs.rename(from, to);
  } catch (err) {
    if (!doneBeforeRestart(req, err, 'ENOENT')) throw err;
    // Renamed on disk by the previous server; its node table may or may not have followed.
    if (source !== undefined && !sameInode) s.nodes.renamed(parent, name, newParent, newName);
    return s.replyOk(req);
  }
  // Two names of one inode: rename(2) does nothing, so both names stay.
  if (!sameInode) s.nodes.renamed(parent, name, newParent, newName);
  s.replyOk(req);
}

export function rename(s: FuseSession, req: Request): Promise<void> {
  return renameCommon(s, req, readU64(req.buf, req.body), 0, req.body + 8);
}

export function rename2(s: FuseSession, req: Request): Promise<void> {
  return renameCommon(s, req, readU64(req.buf, req.body), req.buf.readUInt32LE(req.body + 8), req.body + 16);
}
