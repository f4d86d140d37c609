/**
 * The one place where errors become errnos. Union operations throw FsError (code = errno name) or let
 * Node's own errors (err.code = 'ENOENT', ...) through; FUSE wants a negative errno.
 */
import type { Logger } from '../log.js';
import { errnoOf } from '../errors.js';

const EIO = -errnoOf('EIO');

export function toNegativeErrno(err: unknown, logger: Logger, op: string, path: string): number {
  if (typeof err === 'object' && err !== null) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('E')) {
      const errno = errnoOf(code);
      if (code !== 'EIO' && errno === -EIO) logger.warn({ op, path, code }, 'unknown error code, answering EIO');
      return -errno;
    }
  }
  // Anything without an errno is a bug in Strata: report it loudly, answer EIO.
  logger.error({ op, path, err }, 'operation failed unexpectedly');
  return EIO;
}
