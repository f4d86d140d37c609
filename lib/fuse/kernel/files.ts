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
 */
import { fsError } from '../../errors.js';
import type { FuseSession, Request } from './session.js';
import { readU64, writeU64 } from './codec.js';
import type { KernelNode, NodeIo } from './nodes.js';
import { FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FOPEN_PASSTHROUGH, OPEN_OUT, OUT_HEADER, WRITE_OUT } from './protocol.js';

const S_IFREG = 0o100000;

export interface OpenFile {
  node: KernelNode;
  fd: number;
  fopenFlags: number;
  /** The backing id when this open is in passthrough mode. */
  backingId: number | undefined;
}

function ioOf(node: KernelNode): NodeIo {
  node.io ??= { cachedOpens: 0, backingId: undefined, passthroughOpens: 0, passthroughUsed: false };
  return node.io;
}

/** Decides the open's mode (see the file comment) and records it. */
export function openFile(s: FuseSession, node: KernelNode, fd: number, _unused: boolean): OpenFile {
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
  const open: OpenFile = { node, fd, fopenFlags, backingId };
  s.openFiles.set(fd, open);
  (node.openFds ??= new Set()).add(fd);
  return open;
}

export function writeOpenOut(s: FuseSession, off: number, open: OpenFile): void {
  writeU64(s.out, off, open.fd);
  s.out.writeUInt32LE(open.fopenFlags, off + 8);
  s.out.writeInt32LE(open.backingId ?? 0, off + 12);
}

/** Forgets an open and closes its real fd (and the node's backing id after its last passthrough open). */
export function releaseOpen(s: FuseSession, fd: number): void {
  const open = s.openFiles.get(fd);
  if (open !== undefined) {
    s.openFiles.delete(fd);
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
  s.ufs.release(fd);
}

export async function open(s: FuseSession, req: Request): Promise<void> {
  const node = s.node(req);
  const flags = req.buf.readUInt32LE(req.body);
  const p = node.path();
  if (p === '') throw fsError('ENOENT', `node ${node.id}`);
  const fd = await s.ufs.open(p, flags);
  const opened = openFile(s, node, fd, false);
  writeOpenOut(s, OUT_HEADER, opened);
  if (!s.send(req, OPEN_OUT)) releaseOpen(s, fd);
}

export function read(s: FuseSession, req: Request): void {
  const { buf, body } = req;
  const fh = readU64(buf, body);
  const offset = readU64(buf, body + 8);
  const size = buf.readUInt32LE(body + 16);
  const node = s.nodes.get(req.nodeid);
  const n = s.ufs.read(node?.path() ?? '', fh, s.out.subarray(OUT_HEADER, OUT_HEADER + size), size, offset);
  s.send(req, n);
}

export function write(s: FuseSession, req: Request): void {
  const { buf, body } = req;
  const fh = readU64(buf, body);
  const offset = readU64(buf, body + 8);
  const size = buf.readUInt32LE(body + 16);
  const data = body + 40;
  const n = s.ufs.write(fh, buf.subarray(data, data + size), size, offset);
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

export function fsync(s: FuseSession, req: Request): void {
  const fh = readU64(req.buf, req.body);
  s.ufs.fsync(fh, (req.buf.readUInt32LE(req.body + 8) & 1) !== 0);
  s.replyOk(req);
}

export function fallocate(s: FuseSession, req: Request): void {
  const { buf, body } = req;
  const fh = readU64(buf, body);
  const offset = readU64(buf, body + 8);
  const length = readU64(buf, body + 16);
  const mode = buf.readUInt32LE(body + 24);
  const union = s.ufs as { fallocate?: (fd: number, mode: number, offset: number, length: number) => void };
  if (union.fallocate === undefined) throw fsError('EOPNOTSUPP', 'fallocate');
  union.fallocate.call(s.ufs, fh, mode, offset, length);
  s.replyOk(req);
}
