/**
 * Open files (fs/overlayfs/file.c). The FUSE file handle is the fd of the real file. Opening for writing
 * (or with O_TRUNC) copies the file up first, so writes only ever reach the upper layer.
 */
import fs from 'node:fs';
import { fsError } from '../errors.js';
import { S_IFDIR } from './layer.js';
import { copyUp } from './copy-up.js';
import type { UnionFs } from './super.js';

const { O_ACCMODE, O_WRONLY, O_RDWR, O_TRUNC, O_CREAT, O_EXCL, O_NOCTTY, O_DIRECT } = fs.constants as Record<string, number> & { O_ACCMODE?: number };
const ACCESS_MODE = O_ACCMODE ?? 3;

export function isWriteOpen(flags: number): boolean {
  const access = flags & ACCESS_MODE;
  return access === O_WRONLY || access === O_RDWR || (flags & (O_TRUNC ?? 0)) !== 0;
}

export async function open(ufs: UnionFs, path: string, flags: number): Promise<number> {
  let entry = ufs.lookup(path);
  if (entry.type === S_IFDIR && isWriteOpen(flags)) throw fsError('EISDIR', path);
  if (isWriteOpen(flags)) {
    ufs.assertWritable(path);
    entry = await copyUp(ufs, entry, { skipData: (flags & (O_TRUNC ?? 0)) !== 0 });
  }
  // O_DIRECT needs aligned buffers the FUSE request buffers do not guarantee; creation flags were handled.
  const realFlags = flags & ~((O_CREAT ?? 0) | (O_EXCL ?? 0) | (O_NOCTTY ?? 0) | (O_DIRECT ?? 0));
  return fs.openSync(ufs.dataReal(entry), realFlags);
}

export function read(fd: number, buffer: Buffer, length: number, position: number): number {
  return fs.readSync(fd, buffer, 0, length, position);
}

export function write(fd: number, buffer: Buffer, length: number, position: number): number {
  return fs.writeSync(fd, buffer, 0, length, position);
}

export function release(fd: number): void {
  fs.closeSync(fd);
}

export function fsync(fd: number, dataOnly: boolean): void {
  if (dataOnly) fs.fdatasyncSync(fd);
  else fs.fsyncSync(fd);
}

export function ftruncate(fd: number, size: number): void {
  fs.ftruncateSync(fd, size);
}
