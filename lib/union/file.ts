/**
 * Open files (fs/overlayfs/file.c). The FUSE file handle is the fd of the real file. Opening for writing
 * (or with O_TRUNC) copies the file up first, so writes only ever reach the upper layer.
 */
import fs from 'node:fs';
import { fsError } from '../errors.js';
import { S_IFDIR } from './layer.js';
import { copyUp } from './copy-up.js';
import type { UnionFs } from './super.js';
import { openReal } from './util.js';

const { O_WRONLY, O_RDWR, O_TRUNC, O_CREAT, O_EXCL, O_NOCTTY, O_DIRECT } = fs.constants;
/** O_ACCMODE, which Node does not export. */
const ACCESS_MODE = 3;

export function isWriteOpen(flags: number): boolean {
  const access = flags & ACCESS_MODE;
  return access === O_WRONLY || access === O_RDWR || (flags & O_TRUNC) !== 0;
}

export async function open(ufs: UnionFs, path: string, flags: number): Promise<number> {
  let entry = ufs.lookup(path);
  if (entry.type === S_IFDIR && isWriteOpen(flags)) throw fsError('EISDIR', path);
  if (isWriteOpen(flags)) {
    ufs.assertWritable(path);
    entry = await copyUp(ufs, entry, { skipData: (flags & O_TRUNC) !== 0 });
  }
  // O_DIRECT needs aligned buffers the FUSE request buffers do not guarantee; creation flags were handled.
  const realFlags = flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT);
  const dataReal = ufs.dataReal(entry);
  const fd = openReal(dataReal, realFlags);
  if (!entry.inUpper && entry.type !== S_IFDIR) ufs.lowerReaders.set(fd, { dataReal, fd, realFlags });
  return fd;
}

/**
 * A read-only open of a lower object. If the object is copied up while it is open (another process writes
 * it), reads switch to the upper copy, as they do on kernel overlayfs since Linux 4.19. The original fd stays
 * open until release, so its number (the FUSE handle) cannot be reused meanwhile.
 */
export interface LowerReader {
  /** The real object the current fd reads. */
  dataReal: string;
  fd: number;
  realFlags: number;
}

export function currentReadFd(ufs: UnionFs, path: string, handle: number): number {
  const reader = ufs.lowerReaders.get(handle);
  if (reader === undefined || path === '') return handle;
  let dataReal: string;
  try {
    dataReal = ufs.dataReal(ufs.lookup(path));
  } catch {
    return reader.fd; // renamed away or removed: keep reading what was opened
  }
  if (dataReal !== reader.dataReal) {
    const fd = openReal(dataReal, reader.realFlags);
    if (reader.fd !== handle) fs.closeSync(reader.fd);
    reader.fd = fd;
    reader.dataReal = dataReal;
  }
  return reader.fd;
}

export function read(fd: number, buffer: Buffer, length: number, position: number): number {
  return fs.readSync(fd, buffer, 0, length, position);
}

export function write(fd: number, buffer: Buffer, length: number, position: number): number {
  return fs.writeSync(fd, buffer, 0, length, position);
}

/**
 * True when `fd` already holds `length` bytes of `buffer` at `position`. A WRITE sent again after a server
 * restart may have been done by the server that died: on an O_APPEND fd (which ignores the position) writing it
 * again would append the bytes twice. The kernel gave the position from its own idea of the size, which its
 * writes keep current, so the bytes are there exactly when the write was done.
 */
export function holdsAlready(fd: number, buffer: Buffer, length: number, position: number): boolean {
  if (fs.fstatSync(fd).size < position + length) return false;
  // Read through a fresh open: the handle may be write-only or O_DIRECT.
  const reader = fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_RDONLY);
  try {
    const held = Buffer.allocUnsafe(length);
    return fs.readSync(reader, held, 0, length, position) === length && held.equals(buffer.subarray(0, length));
  } finally {
    fs.closeSync(reader);
  }
}

export function release(ufs: UnionFs, fd: number): void {
  const reader = ufs.lowerReaders.get(fd);
  if (reader !== undefined) {
    ufs.lowerReaders.delete(fd);
    if (reader.fd !== fd) fs.closeSync(reader.fd);
  }
  fs.closeSync(fd);
}

export function fsync(fd: number, dataOnly: boolean): void {
  if (dataOnly) fs.fdatasyncSync(fd);
  else fs.fsyncSync(fd);
}

export function ftruncate(fd: number, size: number): void {
  fs.ftruncateSync(fd, size);
}
