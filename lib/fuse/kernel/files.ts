/**
 * Open files: open, read, write, flush, fsync, release, fallocate. The FUSE file handle is the real fd the
 * union opened (as with fuse-native), so read and write are one syscall each.
 *
 * Kernel page cache and passthrough, per open:
 *  - The kernel is the only way into the merged view, so a file's pages cannot change behind its back: every
 *    cached-mode open gets FOPEN_KEEP_CACHE, and FOPEN_NOFLUSH (there is nothing to flush at close).
 *  - Passthrough (FOPEN_PASSTHROUGH + a backing id) sends reads, writes and mmap straight to the real file.
 *    It is used only where the real file behind the node cannot change while the node is open: an upper
 *    file (including a write-open, after its copy-up), or any file of a read-only mount. A lower file opened
 *    for reading on a writable mount stays in cached mode, because a later copy-up must switch its readers
 *    to the upper copy (file.ts currentReadFd) and a passthrough open's backing file cannot be switched.
 *  - The kernel refuses to mix cached and passthrough opens of one inode, and all passthrough opens of an
 *    inode must share one backing file. So a node with cached opens gets cached opens, and a node's backing
 *    id is registered once and shared (the kernel opens its own backing file per open with that open's
 *    flags), and closed when the node's last passthrough open is released.
 *  - After passthrough writes the node's page cache may be stale, so its next cached open does not keep it.
 *
 * Handles across server restarts: a handle is `epoch * 2^32 + fd` (just the fd for the server that mounted).
 * A server that took the connection over (session.ts resume) does not have its predecessors' fds, so a
 * handle of another epoch is adopted on first use: the node is reopened by its path, with the flags the
 * kernel sends along with READ and WRITE, and the new fd serves that handle until it is released.
 * Passthrough opens of an earlier epoch never reach the server again (the kernel holds their backing file).
 */
import { fsError } from '../../errors.js';
import type { FuseSession, Request } from './session.js';
import { readU64, writeU64, TWO_32 } from './codec.js';
import type { KernelNode, NodeIo } from './nodes.js';
import { FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FOPEN_PASSTHROUGH, OPEN_OUT, OUT_HEADER, WRITE_OUT } from './protocol.js';

const S_IFREG = 0o100000;

export interface OpenFile {
  node: KernelNode;
  /** The FUSE file handle the kernel was given (see the file comment). */
  fh: number;
  fd: number;
  fopenFlags: number;
  /** The backing id when this open is in passthrough mode. */
  backingId: number | undefined;
  /** READ/WRITE of this handle are served by the reader thread (FuseSession.startDirectIo). */
  direct: boolean;
}

function ioOf(node: KernelNode): NodeIo {
  node.io ??= { cachedOpens: 0, backingId: undefined, passthroughOpens: 0, passthroughUsed: false };
  return node.io;
}

/** Decides the open's mode (see the file comment) and records it; `flags` are the open's flags. */
export function openFile(s: FuseSession, node: KernelNode, fd: number, flags: number): OpenFile {
  const io = ioOf(node);
  let backingId: number | undefined;
  const passthroughSafe = s.passthroughEnabled && node.type === S_IFREG && io.cachedOpens === 0 &&
    (s.ufs.readOnly || !s.ufs.isLowerReader(fd));
  if (passthroughSafe) {
    if (io.backingId === undefined) {
      const id = s.dev.backingOpen(s.fd, fd);
      if (id >= 0) io.backingId = id;
      else s.logger.debug({ errno: -id }, 'FUSE_DEV_IOC_BACKING_OPEN refused; cached mode');
    }
    backingId = io.backingId;
  }
  let fopenFlags = FOPEN_NOFLUSH;
  if (backingId !== undefined) {
    io.passthroughOpens += 1;
    io.passthroughUsed = true;
    fopenFlags |= FOPEN_PASSTHROUGH;
  } else {
    io.cachedOpens += 1;
    if (!io.passthroughUsed) fopenFlags |= FOPEN_KEEP_CACHE;
  }
  const fh = s.epoch === 0 ? fd : s.epoch * TWO_32 + fd;
  const open: OpenFile = { node, fh, fd, fopenFlags, backingId, direct: false };
  s.openFiles.set(fh, open);
  (node.openFds ??= new Set()).add(fd);
  if (backingId === undefined) s.startDirectIo(open, (flags & O_ACCMODE) !== 0);
  return open;
}

export function writeOpenOut(s: FuseSession, off: number, open: OpenFile): void {
  writeU64(s.out, off, open.fh);
  s.out.writeUInt32LE(open.fopenFlags, off + 8);
  s.out.writeInt32LE(open.backingId ?? 0, off + 12);
}

/**
 * Forgets an open and closes its real fd (and the node's backing id after its last passthrough open). A
 * handle of an earlier server that was never adopted has nothing here to close.
 */
export function releaseOpen(s: FuseSession, fh: number): void {
  const open = s.openFiles.get(fh);
  let fd = handleEpoch(fh) === s.epoch ? fh % TWO_32 : -1;
  if (open !== undefined) {
    fd = open.fd;
    s.endDirectIo(open);
    s.openFiles.delete(fh);
    const io = ioOf(open.node);
    if (open.backingId !== undefined) {
      io.passthroughOpens -= 1;
      if (io.passthroughOpens === 0 && io.backingId !== undefined) {
        s.dev.backingClose(s.fd, io.backingId);
        io.backingId = undefined;
      }
    } else {
      io.cachedOpens -= 1;
    }
    open.node.openFds?.delete(fd);
  }
  if (fd >= 0) s.ufs.release(fd);
}

/** Which server of the connection gave out a file or dir handle (see the file comment). */
export function handleEpoch(fh: number): number {
  return Math.floor(fh / TWO_32);
}

/** The real fd behind a file handle; undefined for a handle of an earlier server not adopted yet. */
export function fdOfHandle(s: FuseSession, fh: number): number | undefined {
  const open = s.openFiles.get(fh);
  if (open !== undefined) return open.fd;
  return handleEpoch(fh) === s.epoch ? fh % TWO_32 : undefined;
}

const O_ACCMODE = 3;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_TRUNC = 0o1000;

/**
 * Reopens the node of a handle an earlier server gave out (see the file comment) and serves the handle with
 * the new fd from now on, in cached mode. `flags` are the open's flags where the request carries them.
 */
export function adoptHandle(s: FuseSession, req: Request, fh: number, flags: number): Promise<number> {
  let adopting = s.adoptingHandles.get(fh);
  if (adopting === undefined) {
    adopting = (async () => {
      const node = s.node(req);
      const p = node.path();
      if (p === '') throw fsError('ESTALE', `handle ${fh} of node ${node.id}: its file was removed before this server started`);
      const fd = await s.ufs.open(p, flags & ~(O_CREAT | O_EXCL | O_TRUNC));
      ioOf(node).cachedOpens += 1;
      s.openFiles.set(fh, { node, fh, fd, fopenFlags: 0, backingId: undefined, direct: false });
      (node.openFds ??= new Set()).add(fd);
      s.logger.info({ fh, node: node.id, path: p }, 'adopted a file handle of an earlier server');
      return fd;
    })().finally(() => s.adoptingHandles.delete(fh));
    s.adoptingHandles.set(fh, adopting);
  }
  return adopting;
}

/** The fd of a handle, adopting it first if an earlier server gave it out (for requests without open flags). */
export async function fdForRequest(s: FuseSession, req: Request, fh: number, accessMode: number): Promise<number> {
  return fdOfHandle(s, fh) ?? adoptHandle(s, req, fh, accessMode & O_ACCMODE);
}

export async function open(s: FuseSession, req: Request): Promise<void> {
  const node = s.node(req);
  const flags = req.buf.readUInt32LE(req.body);
  const p = s.pathForChange(req, node);
  if (p === '') throw fsError('ENOENT', `node ${node.id}`);
  const fd = await s.ufs.open(p, flags);
  const opened = openFile(s, node, fd, flags);
  writeOpenOut(s, OUT_HEADER, opened);
  if (!s.send(req, OPEN_OUT)) releaseOpen(s, opened.fh);
}

/** fuse_read_in and fuse_write_in carry the open's flags at this offset. */
const IO_OPEN_FLAGS = 32;

export function read(s: FuseSession, req: Request): void | Promise<void> {
  const { buf, body } = req;
  const fh = readU64(buf, body);
  const fd = fdOfHandle(s, fh);
  if (fd === undefined) return adoptHandle(s, req, fh, buf.readUInt32LE(body + IO_OPEN_FLAGS)).then(() => read(s, req));
  const offset = readU64(buf, body + 8);
  const size = buf.readUInt32LE(body + 16);
  const node = s.nodes.get(req.nodeid);
  const n = s.ufs.read(node?.path() ?? '', fd, s.out.subarray(OUT_HEADER, OUT_HEADER + size), size, offset);
  s.send(req, n);
}

export function write(s: FuseSession, req: Request): void | Promise<void> {
  const { buf, body } = req;
  const fh = readU64(buf, body);
  const fd = fdOfHandle(s, fh);
  if (fd === undefined) return adoptHandle(s, req, fh, buf.readUInt32LE(body + IO_OPEN_FLAGS)).then(() => write(s, req));
  const offset = readU64(buf, body + 8);
  const size = buf.readUInt32LE(body + 16);
  const bytes = buf.subarray(body + 40, body + 40 + size);
  // A resent write the dead server already did is answered, not done again (an O_APPEND fd would append twice).
  const n = req.resent && s.ufs.holdsAlready(fd, bytes, size, offset) ? size : s.ufs.write(fd, bytes, size, offset);
  s.out.writeUInt32LE(n, OUT_HEADER);
  s.out.writeUInt32LE(0, OUT_HEADER + 4);
  s.send(req, WRITE_OUT);
}

export function release(s: FuseSession, req: Request): void {
  releaseOpen(s, readU64(req.buf, req.body));
  s.replyOk(req);
}

export function flush(s: FuseSession, req: Request): void {
  s.replyOk(req);
}

export async function fsync(s: FuseSession, req: Request): Promise<void> {
  const fd = await fdForRequest(s, req, readU64(req.buf, req.body), 0);
  s.ufs.fsync(fd, (req.buf.readUInt32LE(req.body + 8) & 1) !== 0);
  s.replyOk(req);
}

export async function fallocate(s: FuseSession, req: Request): Promise<void> {
  const { buf, body } = req;
  const fd = await fdForRequest(s, req, readU64(buf, body), 1);
  const offset = readU64(buf, body + 8);
  const length = readU64(buf, body + 16);
  const mode = buf.readUInt32LE(body + 24);
  const union = s.ufs as { fallocate?: (fd: number, mode: number, offset: number, length: number) => void };
  if (union.fallocate === undefined) throw fsError('EOPNOTSUPP', 'fallocate');
  union.fallocate.call(s.ufs, fd, mode, offset, length);
  s.replyOk(req);
}
