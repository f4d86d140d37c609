/** Shared by `strata image` and `strata layer`: opening the backend, progress on a TTY, and formatting. */
import type { CommandModule } from 'yargs';
import { createLogger } from '../../log.js';
import { openImageBackend, type ImageBackend } from '../backend.js';
import type { ImportProgress, ProgressListener } from '../../layers/types.js';

export interface StoreArgs {
  json: boolean;
  root?: string;
  socket?: string;
}

// Subcommand handlers declare their own argument shapes; yargs's overloads cannot follow them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Sub = CommandModule<StoreArgs, any>;

/**
 * Runs `work` against the daemon when it answers on --socket (and serves --root), else against the store for --root
 * in-process, always closing it (LevelDB holds a lock until then).
 */
export async function withBackend<T>(argv: StoreArgs, work: (backend: ImageBackend) => Promise<T>): Promise<T> {
  const logger = createLogger({ name: 'strata' });
  const backend = await openImageBackend({ root: argv.root, socket: argv.socket }, logger);
  try {
    return await work(backend);
  } finally {
    await backend.close();
  }
}

/** A one-line progress display on stderr, only when stderr is a terminal and output is not JSON. */
export function progressFor(argv: StoreArgs): { onProgress?: ProgressListener; done(): void } {
  if (argv.json || !process.stderr.isTTY) return { done() {} };
  let lastDraw = 0;
  let drawn = false;
  return {
    onProgress(p: ImportProgress) {
      const now = Date.now();
      if (now - lastDraw < 100) return;
      lastDraw = now;
      drawn = true;
      const total = p.totalBytes === null ? '' : ` / ${formatBytes(p.totalBytes)}`;
      process.stderr.write(`\r\x1b[Klayer ${p.layer}/${p.layers}: ${formatBytes(p.bytes)}${total}`);
    },
    done() {
      if (drawn) process.stderr.write('\r\x1b[K');
    },
  };
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** "sha256:0123456789abcdef…" -> "0123456789ab". */
export function shortId(digest: string | null | undefined): string {
  if (!digest) return '-';
  return digest.replace(/^sha256:/, '').slice(0, 12);
}
