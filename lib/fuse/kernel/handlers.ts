/** The op table: FUSE opcode -> handler. Opcodes not listed get ENOSYS (the kernel then stops sending most). */
import type { FuseSession, Request } from './session.js';
import { Op } from './protocol.js';
import * as entries from './entries.js';
import * as attrs from './attrs.js';
import * as files from './files.js';
import * as dirs from './dirs.js';
import * as xattrs from './xattrs.js';

/** A handler answers the request itself (now or when its promise settles); throwing answers its errno. */
export type Handler = (s: FuseSession, req: Request) => void | Promise<void>;

export const handlers: Partial<Record<number, Handler>> = {
  [Op.LOOKUP]: entries.lookup,
  [Op.FORGET]: entries.forget,
  [Op.BATCH_FORGET]: entries.batchForget,
  [Op.MKNOD]: entries.mknod,
  [Op.MKDIR]: entries.mkdir,
  [Op.SYMLINK]: entries.symlink,
  [Op.LINK]: entries.link,
  [Op.CREATE]: entries.create,
  [Op.UNLINK]: entries.unlink,
  [Op.RMDIR]: entries.rmdir,
  [Op.RENAME]: entries.rename,
  [Op.RENAME2]: entries.rename2,
  [Op.GETATTR]: attrs.getattr,
  [Op.SETATTR]: attrs.setattr,
  [Op.READLINK]: attrs.readlink,
  [Op.STATFS]: attrs.statfs,
  [Op.OPEN]: files.open,
  [Op.READ]: files.read,
  [Op.WRITE]: files.write,
  [Op.FLUSH]: files.flush,
  [Op.FSYNC]: files.fsync,
  [Op.RELEASE]: files.release,
  [Op.FALLOCATE]: files.fallocate,
  [Op.OPENDIR]: dirs.opendir,
  [Op.READDIR]: dirs.readdir,
  [Op.READDIRPLUS]: dirs.readdirplus,
  [Op.RELEASEDIR]: dirs.releasedir,
  [Op.FSYNCDIR]: dirs.fsyncdir,
  [Op.GETXATTR]: xattrs.getxattr,
  [Op.LISTXATTR]: xattrs.listxattr,
  [Op.SETXATTR]: xattrs.setxattr,
  [Op.REMOVEXATTR]: xattrs.removexattr,
};
