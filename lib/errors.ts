/**
 * The one error table of Strata.
 *
 * Every error that leaves a component carries a stable `code`:
 *  - an errno name (ENOENT, EXDEV, ...) for filesystem errors, which lib/fuse turns into a negative errno;
 *  - a STRATA_* code for domain errors, which the API and CLI report verbatim.
 * Context (the failing path, the underlying error) goes into `cause`, never into the code.
 * docs/errors.md documents this table; test/errors.test.ts checks that the two agree.
 */
import { constants as osConstants } from 'node:os';

export interface ErrorSpec {
  /** HTTP status the control API answers with. */
  readonly status: number;
  /** One line that tells a user what happened. */
  readonly summary: string;
}

export const STRATA_ERRORS = {
  STRATA_BAD_OPTION: { status: 400, summary: 'an option or argument is malformed or unknown' },
  STRATA_BAD_REQUEST: { status: 400, summary: 'the API request is malformed' },
  STRATA_NOT_FOUND: { status: 404, summary: 'the named image, layer, mount or volume does not exist' },
  STRATA_CONFLICT: { status: 409, summary: 'the name is already taken' },
  STRATA_IN_USE: { status: 409, summary: 'the object is still referenced and cannot be removed' },
  STRATA_BAD_DIR: { status: 400, summary: 'a directory given is missing, unreadable or of the wrong kind' },
  STRATA_MOUNT_FAILED: { status: 500, summary: 'the FUSE mount could not be made' },
  STRATA_MOUNT_BUSY: { status: 409, summary: 'the mountpoint is already in use' },
  STRATA_DIGEST_MISMATCH: { status: 400, summary: 'a blob does not match its digest' },
  STRATA_BAD_ARCHIVE: { status: 400, summary: 'an image archive or layer tar is malformed or hostile' },
  STRATA_UNSUPPORTED: { status: 400, summary: 'the input uses a format or media type Strata does not support' },
  STRATA_LOCKED: { status: 409, summary: 'another process holds the state dir lock' },
  STRATA_DAEMON_UNREACHABLE: { status: 503, summary: 'the daemon is not running or its socket is unreachable' },
  STRATA_BENCH_FAILED: { status: 500, summary: 'a benchmark workload failed or its result did not check out' },
  STRATA_REGISTRY_AUTH: { status: 401, summary: 'the registry refused the credentials, or has none for this user and repository' },
  STRATA_REGISTRY_FAILED: { status: 502, summary: 'the registry could not be reached or answered with an error' },
  STRATA_STORE_CORRUPT: { status: 500, summary: 'the metadata store is inconsistent with the disk' },
  STRATA_STORE_FAILED: { status: 503, summary: 'the metadata store cannot write (e.g. the state dir is full) and accepts no change until it reopens cleanly' },
  STRATA_STORE_ACCESS: { status: 403, summary: 'the state dir or its database cannot be read or written by this user' },
  STRATA_INTERNAL: { status: 500, summary: 'an unexpected internal error' },
} as const satisfies Record<string, ErrorSpec>;

export type StrataCode = keyof typeof STRATA_ERRORS;

/** A domain error with a stable STRATA_* code. */
export class StrataError extends Error {
  readonly code: StrataCode;
  constructor(code: StrataCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StrataError';
    this.code = code;
  }
  get status(): number {
    return STRATA_ERRORS[this.code].status;
  }
}

/** A filesystem error named by its errno, as the union filesystem raises it. */
export class FsError extends Error {
  readonly code: string;
  readonly errno: number;
  constructor(code: string, message?: string, options?: { cause?: unknown }) {
    super(message ?? code, options);
    this.name = 'FsError';
    this.code = code;
    this.errno = errnoOf(code);
  }
}

const ERRNO_BY_NAME = osConstants.errno as Record<string, number>;

/** The positive errno for a name such as 'ENOENT'; EIO for anything unknown. */
export function errnoOf(code: string | undefined): number {
  if (code !== undefined) {
    const n = ERRNO_BY_NAME[code];
    if (typeof n === 'number') return n;
  }
  return ERRNO_BY_NAME.EIO ?? 5;
}

export function isErrno(err: unknown, ...codes: string[]): boolean {
  return typeof err === 'object' && err !== null && codes.includes((err as { code?: string }).code ?? '');
}

export function fsError(code: string, message?: string, cause?: unknown): FsError {
  return new FsError(code, message, cause === undefined ? undefined : { cause });
}
