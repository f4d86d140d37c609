/**
 * The FUSE wire protocol as this transport speaks it: opcodes, flags and struct sizes from the kernel's
 * include/uapi/linux/fuse.h. Debian 12's header stops at 7.38, so the 7.39/7.40 values (passthrough,
 * resend, max_stack_depth) are written out here from the kernel ABI; test/fuse-kernel.test.ts checks them
 * against this machine's kernel.
 */

export const FUSE_KERNEL_VERSION = 7;
/** The minor version we implement; the kernel and we use the smaller of the two. */
export const FUSE_KERNEL_MINOR_VERSION = 40;
export const FUSE_ROOT_ID = 1;

export const enum Op {
  LOOKUP = 1, FORGET = 2, GETATTR = 3, SETATTR = 4, READLINK = 5, SYMLINK = 6, MKNOD = 8, MKDIR = 9,
  UNLINK = 10, RMDIR = 11, RENAME = 12, LINK = 13, OPEN = 14, READ = 15, WRITE = 16, STATFS = 17,
  RELEASE = 18, FSYNC = 20, SETXATTR = 21, GETXATTR = 22, LISTXATTR = 23, REMOVEXATTR = 24, FLUSH = 25,
  INIT = 26, OPENDIR = 27, READDIR = 28, RELEASEDIR = 29, FSYNCDIR = 30, GETLK = 31, SETLK = 32, SETLKW = 33,
  ACCESS = 34, CREATE = 35, INTERRUPT = 36, BMAP = 37, DESTROY = 38, IOCTL = 39, POLL = 40, NOTIFY_REPLY = 41,
  BATCH_FORGET = 42, FALLOCATE = 43, READDIRPLUS = 44, RENAME2 = 45, LSEEK = 46, COPY_FILE_RANGE = 47,
  SETUPMAPPING = 48, REMOVEMAPPING = 49, SYNCFS = 50, TMPFILE = 51, STATX = 52,
}

/** INIT flags (flags | flags2 << 32). Kept as numbers below 2^53. */
export const InitFlag = {
  ASYNC_READ: 2 ** 0,
  POSIX_LOCKS: 2 ** 1,
  ATOMIC_O_TRUNC: 2 ** 3,
  EXPORT_SUPPORT: 2 ** 4,
  BIG_WRITES: 2 ** 5,
  DONT_MASK: 2 ** 6,
  SPLICE_WRITE: 2 ** 7,
  SPLICE_MOVE: 2 ** 8,
  SPLICE_READ: 2 ** 9,
  FLOCK_LOCKS: 2 ** 10,
  AUTO_INVAL_DATA: 2 ** 12,
  DO_READDIRPLUS: 2 ** 13,
  READDIRPLUS_AUTO: 2 ** 14,
  ASYNC_DIO: 2 ** 15,
  WRITEBACK_CACHE: 2 ** 16,
  PARALLEL_DIROPS: 2 ** 18,
  HANDLE_KILLPRIV: 2 ** 19,
  ABORT_ERROR: 2 ** 21,
  MAX_PAGES: 2 ** 22,
  CACHE_SYMLINKS: 2 ** 23,
  /** The kernel can open directories without OPENDIR (5.1+): it stops sending it once answered ENOSYS. */
  NO_OPENDIR_SUPPORT: 2 ** 24,
  EXPLICIT_INVAL_DATA: 2 ** 25,
  INIT_EXT: 2 ** 30,
  // flags2 (bit 32 and up)
  PASSTHROUGH: 2 ** 37,
  NO_EXPORT_SUPPORT: 2 ** 38,
  HAS_RESEND: 2 ** 39,
} as const;

export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;
export const FOPEN_NOFLUSH = 1 << 5;
export const FOPEN_PASSTHROUGH = 1 << 7;

export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;

export const FUSE_GETATTR_FH = 1 << 0;

export const enum Notify {
  INVAL_INODE = 2,
  INVAL_ENTRY = 3,
  DELETE = 6,
  /** 7.40: every request read but not answered yet is queued again (FUSE_UNIQUE_RESEND set in its unique). */
  RESEND = 7,
}

/** Struct sizes in bytes. */
export const IN_HEADER = 40;
export const OUT_HEADER = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT = 40 + ATTR_SIZE;
export const ATTR_OUT = 16 + ATTR_SIZE;
export const OPEN_OUT = 16;
export const INIT_OUT = 64;
export const STATFS_OUT = 80;
export const DIRENT_BASE = 24;
export const WRITE_OUT = 8;
export const XATTR_OUT = 8;

/** Offsets in fuse_in_header. */
export const enum InHeader {
  len = 0, opcode = 4, unique = 8, nodeid = 16, uid = 24, gid = 28, pid = 32,
}

/** Our request buffer: max_write (1 MiB, 256 pages) plus room for the headers. */
export const MAX_PAGES = 256;
export const MAX_WRITE = MAX_PAGES * 4096;
export const REQUEST_BUFFER_SIZE = MAX_WRITE + 4096;
