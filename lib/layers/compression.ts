/**
 * Layer blob compression: detection by magic number, and decompressing streams.
 * gzip uses ISA-L's `igzip` when it is installed (Debian package isal): it inflates about 3 times as fast as
 * node:zlib, and in its own process, off the thread that untars; otherwise node:zlib. zstd is not in Node 20's
 * zlib, so it runs the `zstd` binary (Debian package zstd, installed by scripts/setup.sh), which streams and is
 * faster than any pure-JS decoder. Both tools check their input fully (gzip CRC and length, zstd checksum) and
 * exit non-zero on corrupt or truncated data.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, open } from 'node:fs/promises';
import path from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { StrataError } from '../errors.js';

export type Compression = 'none' | 'gzip' | 'zstd';

const GUNZIP_CHUNK_BYTES = 256 * 1024;

/** Reads the first bytes of a file and names its compression. Anything not gzip or zstd is taken as a plain tar. */
export async function detectCompression(file: string): Promise<Compression> {
  const handle = await open(file, 'r');
  try {
    const head = Buffer.alloc(HEAD_BYTES);
    const { bytesRead } = await handle.read(head, 0, HEAD_BYTES, 0);
    return compressionOf(head.subarray(0, bytesRead), file);
  } finally {
    await handle.close();
  }
}

/** How many leading bytes compressionOf needs to tell the formats apart. */
export const HEAD_BYTES = 4;

/** Names the compression of a blob from its first bytes (at least HEAD_BYTES of them unless the blob is shorter). */
export function compressionOf(head: Buffer, what: string): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.length >= 3 && head.toString('latin1', 0, 3) === 'BZh') {
    throw new StrataError('STRATA_UNSUPPORTED', `${what}: bzip2 compression is not supported (use gzip, zstd or a plain tar)`);
  }
  if (head.length >= 4 && head.readUInt32BE(0) === 0xfd377a58) {
    throw new StrataError('STRATA_UNSUPPORTED', `${what}: xz compression is not supported (use gzip, zstd or a plain tar)`);
  }
  return 'none';
}

export interface Decompressor {
  stream: Duplex;
  /** Settles once the decoder has fully checked its input (for zstd: once the process has exited). */
  checked: Promise<void>;
}

/** How gzip is inflated: `igzip` at this path, or node:zlib (null). */
export type GunzipTool = string | null;

/** Which gzip decoder to use: igzip when found on PATH (auto), or node:zlib, or igzip required. */
export type GunzipChoice = 'auto' | 'zlib' | 'igzip';

/** Resolves a GunzipChoice to the decoder to use (one PATH lookup; the caller keeps the answer). */
export async function findGunzipTool(choice: GunzipChoice, searchPath = process.env.PATH ?? ''): Promise<GunzipTool> {
  if (choice === 'zlib') return null;
  for (const dir of searchPath.split(':').filter((d) => path.isAbsolute(d))) {
    const candidate = path.join(dir, 'igzip');
    if (await access(candidate, fsConstants.X_OK).then(() => true, () => false)) return candidate;
  }
  if (choice === 'igzip') throw new StrataError('STRATA_UNSUPPORTED', 'igzip was asked for as the gzip decoder but is not on PATH (Debian package isal)');
  return null;
}

/** A duplex stream that decompresses `compression`. Errors from the decoder name `what`. */
export function decompressor(compression: Compression, what: string, gunzipTool: GunzipTool = null): Decompressor {
  switch (compression) {
    case 'none':
      return { stream: new PassThrough(), checked: Promise.resolve() };
    case 'gzip':
      if (gunzipTool !== null) return toolDecompressor(gunzipTool, ['-d', '-c', '-q'], 'gzip', what);
      // zlib's default 16 KiB output chunk costs a threadpool round trip, a callback and a tar-parser step per
      // 16 KiB: 256 KiB chunks halve gunzip's CPU time on layer blobs (measured, docs/benchmarks.md "Registry pull").
      return { stream: createGunzip({ chunkSize: GUNZIP_CHUNK_BYTES }), checked: Promise.resolve() };
    case 'zstd':
      return toolDecompressor('zstd', ['-d', '-c', '-q', '--no-progress'], 'zstd', what);
  }
}

/** A decoder process (zstd, igzip) as a duplex stream: the blob on its stdin, the tar from its stdout. */
function toolDecompressor(command: string, args: string[], format: string, what: string): Decompressor {
  const tool = path.basename(command);
  const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const duplex = Duplex.from({ writable: child.stdin, readable: child.stdout });
  child.on('error', (err) => duplex.destroy(new StrataError('STRATA_UNSUPPORTED', `${what}: cannot run ${tool} to decompress`, { cause: err })));
  // The exit status can arrive after stdout has ended; a corrupt or truncated stream exits non-zero.
  const checked = new Promise<void>((resolve, reject) => {
    child.on('close', (code, signal) => {
      if (code === 0) return resolve();
      const err = new StrataError('STRATA_BAD_ARCHIVE', `${what}: truncated or corrupt ${format} data: ${stderr.trim() || `${tool} exited ${code ?? signal}`}`);
      if (!duplex.destroyed) duplex.destroy(err);
      reject(err);
    });
  });
  checked.catch(() => undefined);
  duplex.on('close', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return { stream: duplex, checked };
}
