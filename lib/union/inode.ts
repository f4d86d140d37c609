/**
 * Attributes (fs/overlayfs/inode.c): getattr reports the visible object's attributes with the union's
 * inode number; every attribute change copies the object up first and then changes the upper copy.
 */
import { sys, StatIndex } from '../native/index.js';
import { fsError } from '../errors.js';
import { S_IFDIR, type UnionEntry } from './layer.js';
import { copyUp } from './copy-up.js';
import { indexEntryOf, storedUnionNlink } from './index.js';
import type { UnionFs } from './super.js';
import { readlinkReal } from './util.js';

/** Fills `out` with the attributes of `path`. */
export function getattr(ufs: UnionFs, path: string, out: Float64Array): void {
  if (!getattrIfExists(ufs, path, out)) throw fsError('ENOENT', path);
}

/** As getattr, but returns false instead of throwing when the last name of `path` does not exist. */
export function getattrIfExists(ufs: UnionFs, path: string, out: Float64Array): boolean {
  // A name not cached yet is lstat'ed by its lookup: that stat, taken just now, answers (one lstat less per
  // first lookup, the FUSE LOOKUP path). A cached name is lstat'ed here.
  const fresh = ufs.foundStat;
  fresh.real = undefined;
  let entry = ufs.lookupIfExists(path);
  if (entry === undefined) return false;
  const real = ufs.dataReal(entry);
  const reused = fresh.real === real;
  fresh.real = undefined;
  if (reused) {
    out.set(fresh.stat);
  } else if (sys.lstatRaw(real, out) < 0) {
    // The cached resolution went stale (the object moved within its layer): resolve once more.
    ufs.invalidatePath(path);
    entry = ufs.lookup(path);
    const rc = sys.lstatRaw(ufs.dataReal(entry), out);
    if (rc < 0) throw fsError('ENOENT', path);
  }
  fixupAttrs(entry, out);
  // An inode shared with the hard link index reports the union's link count, not the real one.
  // As on the kernel, only an inode the index still knows (the workdir was kept) uses the stored count.
  if (entry.type !== S_IFDIR && (entry.indexReal !== undefined || (entry.inUpper && (out[StatIndex.nlink] ?? 1) > 1 && isIndexed(ufs, entry)))) {
    const nlink = storedUnionNlink(ufs, ufs.dataReal(entry), out[StatIndex.nlink] ?? 1, entry.lowerNlink);
    if (nlink !== undefined) out[StatIndex.nlink] = nlink;
  }
  return true;
}

/** Attributes of an open file by fd: used for files already unlinked, where no path is left. */
export function getattrByFd(fd: number, out: Float64Array): void {
  const rc = sys.fstatRaw(fd, out);
  if (rc < 0) throw fsError('EBADF', `fd ${fd}`);
}

function fixupAttrs(entry: UnionEntry, out: Float64Array): void {
  out[StatIndex.ino] = entry.ino;
  // Like kernel overlayfs, a merged directory (more than one real dir behind it) reports one link: its
  // subdirectory count is not known without merging every layer.
  if (entry.type === S_IFDIR && entry.lowers.length > 0) out[StatIndex.nlink] = 1;
}

export async function chmod(ufs: UnionFs, path: string, mode: number): Promise<void> {
  const entry = await copyUp(ufs, ufs.lookup(path));
  ufs.realfs.chmod(entry.top.real, mode & 0o7777);
}

export async function chown(ufs: UnionFs, path: string, uid: number, gid: number): Promise<void> {
  const entry = await copyUp(ufs, ufs.lookup(path));
  // FUSE passes (uid_t)-1 for "leave unchanged"; lchown takes -1 for the same.
  ufs.realfs.lchown(entry.top.real, uid === 0xffffffff ? -1 : uid, gid === 0xffffffff ? -1 : gid);
}

export async function utimens(ufs: UnionFs, path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): Promise<void> {
  const entry = await copyUp(ufs, ufs.lookup(path));
  ufs.realfs.utimens(entry.top.real, atimeSec, atimeNsec, mtimeSec, mtimeNsec);
}

export async function truncate(ufs: UnionFs, path: string, size: number): Promise<void> {
  const entry = ufs.lookup(path);
  if (entry.type === S_IFDIR) throw fsError('EISDIR', path);
  const upper = await copyUp(ufs, entry, { skipData: size === 0 });
  ufs.realfs.truncate(upper.top.real, size);
}

export function readlink(ufs: UnionFs, path: string): string {
  return readlinkReal(ufs.dataReal(ufs.lookup(path)));
}

function isIndexed(ufs: UnionFs, entry: UnionEntry): boolean {
  entry.indexed ??= indexEntryOf(ufs, entry) !== undefined;
  return entry.indexed;
}
