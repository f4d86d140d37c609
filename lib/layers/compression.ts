/**
 * Layer blob compression: detection by magic number, and decompressing streams.
 * gzip uses node:zlib; zstd is not in Node 20's zlib, so it runs the `zstd` binary (Debian package zstd,
 * installed by scripts/setup.sh), which streams and is faster than any pure-JS decoder.
 */
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { Duplex, PassThrough } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { StrataError } from '../errors.js';

export type Compression = 'none' | 'gzip' | 'zstd';

/** Reads the first bytes of a file and names its compression. Anything not gzip or zstd is taken as a plain tar. */
export async function detectCompression(file: string): Promise<Compression> {
  const handle = await open(file, 'r');
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    if (bytesRead >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
    if (bytesRead >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    if (bytesRead >= 3 && head.toString('latin1', 0, 3) === 'BZh') {
      throw new StrataError('STRATA_UNSUPPORTED', `${file}: bzip2 compression is not supported (use gzip, zstd or a plain tar)`);
    }
    if (bytesRead >= 4 && head.readUInt32BE(0) === 0xfd377a58) {
      throw new StrataError('STRATA_UNSUPPORTED', `${file}: xz compression is not supported (use gzip, zstd or a plain tar)`);
    }
    return 'none';
  } finally {
    await handle.close();
  }
}

export interface Decompressor {
  stream: Duplex;
  /** Settles once the decoder has fully checked its input (for zstd: once the process has exited). */
  checked: Promise<void>;
}

/** A duplex stream that decompresses `compression`. Errors from the decoder name `what`. */
export function decompressor(compression: Compression, what: string): Decompressor {
  switch (compression) {
    case 'none':
      return { stream: new PassThrough(), checked: Promise.resolve() };
    case 'gzip':
      return { stream: createGunzip(), checked: Promise.resolve() };
    case 'zstd':
      return zstdDecompressor(what);
  }
}

function zstdDecompressor(what: string): Decompressor {
  const child = spawn('zstd', ['-d', '-c', '-q', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const duplex = Duplex.from({ writable: child.stdin, readable: child.stdout });
  child.on('error', (err) => duplex.destroy(new StrataError('STRATA_UNSUPPORTED', `${what}: cannot run zstd to decompress`, { cause: err })));
  // The exit status can arrive after stdout has ended; a corrupt or truncated stream exits non-zero.
  const checked = new Promise<void>((resolve, reject) => {
    child.on('close', (code, signal) => {
      if (code === 0) return resolve();
      const err = new StrataError('STRATA_BAD_ARCHIVE', `${what}: corrupt zstd data: ${stderr.trim() || `zstd exited ${code ?? signal}`}`);
      if (!duplex.destroyed) duplex.destroy(err);
      reject(err);
    });
  });
  checked.catch(() => undefined);
  duplex.on('close', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return { stream: duplex, checked };
}
