/**
 * strata_fetch: one HTTP GET of a registry blob on a native thread (native/strata_fetch.c, libcurl), appended to
 * a file and hashed as it arrives. The registry client (lib/registry/client.ts) is its only user and keeps all
 * policy: which URL, which headers (credentials), redirects, challenges, retries, and what a status means.
 *
 * CONTRACT:
 *  - The file is opened (created 0600 when missing) and every byte it already holds is read and hashed first; a
 *    file longer than `size` is emptied. When it then holds `size` bytes, no request is made (status 0).
 *  - Otherwise one GET of `url`, with `Range: bytes=HELD-` when the file holds bytes. A 200 answer's first HELD
 *    bytes are skipped; a 206 must start at HELD (else stop 'range'). The body of any other status is kept (up to
 *    64 KiB) in errorBody and not written.
 *  - No redirect is followed, no proxy used, no challenge answered. Only http and https URLs are accepted.
 *  - `digest` (hex) is set exactly when the file ends holding `size` bytes, and covers all of them.
 *  - progress[0] is the bytes the file holds, updated as they land; setting progress[1] to 1 stops the transfer
 *    (stop 'aborted') within about a second.
 *  - The callback runs once, on the JS thread; it never throws into the caller.
 */
import { loadNativeAddon } from './load.js';

export interface FetchRequest {
  url: string;
  /** Header lines, "Name: value". */
  headers: string[];
  file: string;
  /** The blob's size: the file never holds more. */
  size: number;
  /** Connect timeout, and how long under a byte a second counts as a dead connection. */
  timeoutSeconds: number;
  /**
   * A PEM bundle trusted besides the system's CAs (/etc/ssl/certs). The client passes NODE_EXTRA_CA_CERTS, the
   * file Node's own requests trust besides its built-in roots, so both halves of a pull trust the same CAs.
   */
  caFile?: string;
  /** Float64Array(2): [0] bytes held (written by the download), [1] set to 1 to stop it. */
  progress: Float64Array;
}

/** Why a transfer stopped before its end, when not for the network: see the contract. */
export type FetchStop = 'aborted' | 'overflow' | 'range' | 'file';

export interface FetchResult {
  /** The HTTP status of the answer, or 0 when no request was made (or none was answered). */
  status: number;
  /** The answer's status line and header lines, as sent. */
  headers: string | null;
  errorBody: string | null;
  /** Bytes the file holds now (all of them hashed). */
  held: number;
  /** Bytes received over the network, skipped ones included. */
  transferred: number;
  digest: string | null;
  /** libcurl's CURLcode, 0 for success. */
  curlCode: number;
  curlError: string | null;
  stop: FetchStop | null;
  /** For stop 'file': the errno's name ('ENOSPC') and the call that failed. */
  code: string | null;
  syscall: string | null;
}

interface StrataFetch {
  fetchToFile(request: FetchRequest, done: (result: FetchResult) => void): void;
}

let addon: StrataFetch | undefined;

export function fetchToFile(request: FetchRequest): Promise<FetchResult> {
  addon ??= loadNativeAddon<StrataFetch>('strata_fetch');
  const native = addon;
  return new Promise((resolve) => native.fetchToFile(request, resolve));
}

/** libcurl's codes for "never got an answer" (the host could not be reached), as opposed to a transfer cut off. */
export const CURL_UNREACHABLE = new Set([5 /* COULDNT_RESOLVE_PROXY */, 6 /* COULDNT_RESOLVE_HOST */, 7 /* COULDNT_CONNECT */]);
