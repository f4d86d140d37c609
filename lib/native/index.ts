/**
 * strata_sys: the small N-API addon (native/strata_sys.c) for the Linux calls Node does not have.
 *
 * CONTRACT (the union filesystem is written against exactly this; keep it stable):
 *  - Functions that throw raise an Error with `code` = errno name ('ENOENT'), `errno` (negative, as Node does),
 *    `syscall` and `path`, exactly like Node's own fs errors, so callers can test `err.code`.
 *  - Functions named *Raw never throw for an errno: they return 0 or a negative errno. They exist for hot paths.
 *  - All calls are synchronous except copyData, which runs on the libuv threadpool.
 *  - Every call that takes a path accepts a path of any length: one of PATH_MAX bytes or more is walked in hops
 *    (openat(O_PATH|O_DIRECTORY) of prefixes that fit, each relative to the last) and the call is made relative
 *    to the deepest dir fd (the *at form, or /proc/self/fd/N of an O_PATH fd where no *at form exists: xattrs,
 *    truncate). Shorter paths take no hop. The union's real paths (layer root + merged path) have no limit.
 */
import { loadNativeAddon } from './load.js';

/** Indices into the Float64Array filled by lstatRaw/fstatRaw. Times are split into seconds and nanoseconds. */
export const enum StatIndex {
  mode = 0, uid, gid, size, dev, nlink, ino, rdev, blksize, blocks,
  atimeSec, atimeNsec, mtimeSec, mtimeNsec, ctimeSec, ctimeNsec,
  length,
}

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
export const RENAME_WHITEOUT = 4;
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

export interface FileHandle {
  /** The handle_type that name_to_handle_at returned (FILEID_* of the filesystem). */
  type: number;
  /** The opaque f_handle bytes. */
  handle: Buffer;
}

export interface DirListing {
  names: string[];
  /** d_type per name (DT_REG=8, DT_DIR=4, DT_LNK=10, DT_CHR=2, DT_BLK=6, DT_FIFO=1, DT_SOCK=12, DT_UNKNOWN=0). */
  types: Uint8Array;
  /** d_ino per name. */
  inos: Float64Array;
}

export interface StrataSys {
  /** lstat(2) into `out` (length >= StatIndex.length). Returns 0 or -errno. */
  lstatRaw(file: string, out: Float64Array): number;
  /** fstat(2) into `out`. Returns 0 or -errno. */
  fstatRaw(fd: number, out: Float64Array): number;

  /** lgetxattr(2). Returns null when the attribute does not exist (ENODATA). */
  lgetxattr(file: string, name: string): Buffer | null;
  /** lsetxattr(2); flags is 0, XATTR_CREATE or XATTR_REPLACE. */
  lsetxattr(file: string, name: string, value: Buffer, flags: number): void;
  /** llistxattr(2), split into names. */
  llistxattr(file: string): string[];
  /** lremovexattr(2). */
  lremovexattr(file: string, name: string): void;
  /** fgetxattr/fsetxattr/flistxattr on an open fd (layer import sets xattrs on the fd it wrote; copy-up uses the l* calls). */
  fgetxattr(fd: number, name: string): Buffer | null;
  fsetxattr(fd: number, name: string, value: Buffer, flags: number): void;
  flistxattr(fd: number): string[];

  /** mknod(2); mode carries the file type bits (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, S_IFREG). */
  mknod(file: string, mode: number, dev: number): void;
  /** renameat2(2) with RENAME_* flags. */
  renameat2(from: string, to: string, flags: number): void;
  /** utimensat(2). Nanosecond fields may be UTIME_NOW or UTIME_OMIT. noFollow sets AT_SYMLINK_NOFOLLOW. */
  utimensat(file: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number, noFollow: boolean): void;
  /** futimens(3), same time encoding. */
  futimens(fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void;
  /** fallocate(2) with FALLOC_FL_* mode bits; EOPNOTSUPP where the filesystem lacks the mode. */
  fallocate(fd: number, mode: number, offset: number, length: number): void;

  /**
   * Copy `length` bytes of data from srcFd to dstFd, both at offset 0, keeping holes: try FICLONE first,
   * then walk SEEK_DATA/SEEK_HOLE and copy each data extent with copy_file_range (falling back to read/write),
   * and finally ftruncate dst to `length`. Runs on the threadpool; resolves with the bytes of data copied.
   */
  copyData(srcFd: number, dstFd: number, length: number): Promise<number>;

  /** name_to_handle_at(AT_FDCWD, file, ..., AT_SYMLINK_FOLLOW=0). */
  nameToHandle(file: string): FileHandle;
  /** open_by_handle_at(mountFd, handle, flags). Needs CAP_DAC_READ_SEARCH. Returns the new fd. */
  openByHandle(mountFd: number, type: number, handle: Buffer, flags: number): number;
  /** The filesystem UUID (FS_IOC_GETFSUUID) of the filesystem holding `file`, or null when unsupported. */
  getFsUuid(file: string): Buffer | null;

  /** readdir(3) of a directory in one call, without "." and "..". */
  readdirIno(dir: string): DirListing;

  // The calls Node's fs has too, for paths Node cannot pass (PATH_MAX and longer). Same semantics and errors.
  /** mkdir(2). */
  mkdir(file: string, mode: number): void;
  /** rmdir(2). */
  rmdir(file: string): void;
  /** unlink(2). */
  unlink(file: string): void;
  /** symlink(2): `file` becomes a symlink to `target`. */
  symlink(target: string, file: string): void;
  /** link(2), not following a final symlink of `existing`. */
  link(existing: string, file: string): void;
  /** open(2) with O_CLOEXEC; the fd works with every fd call of Node's fs (read, write, close...). */
  open(file: string, flags: number, mode: number): number;
  /** lchown(2); -1 leaves an id unchanged. */
  lchown(file: string, uid: number, gid: number): void;
  /** chmod(2). */
  chmod(file: string, mode: number): void;
  /** truncate(2). */
  truncate(file: string, size: number): void;
  /** readlink(2), decoded as UTF-8 (as fs.readlinkSync does). */
  readlink(file: string): string;
  /** rm -rf: removes `file` and everything below it, of any depth, with one dir fd at a time; a missing path is fine. */
  removeTree(file: string): void;

  /** sched_setaffinity(2) of the calling thread to one CPU; threads it creates later inherit it. */
  pinThreadToCpu(cpu: number): void;
}

export const sys: StrataSys = loadNativeAddon<StrataSys>('strata_sys');
