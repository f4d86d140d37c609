/** Shared by `strata image` and `strata layer`: opening the backend, progress on a TTY, and formatting. */
import type { CommandModule } from 'yargs';
import { openImageBackend } from '../backend.js';
import type { ImageBackend } from '../../images/service.js';
import { progressBars } from '../progress.js';
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
  const backend = await openImageBackend({ root: argv.root, socket: argv.socket });
  try {
    return await work(backend);
  } finally {
    await backend.close();
  }
}

/**
 * Per-layer progress bars for import and export (lib/cli/progress.ts): bytes done of total and the rate, only when
 * stdout (and stderr, where they are drawn) is a terminal and output is not JSON.
 */
export function progressFor(argv: StoreArgs, verb = 'layer'): { onProgress?: ProgressListener; done(): void } {
  if (argv.json || process.stdout.isTTY !== true) return { done() {} };
  const bars = progressBars({ json: argv.json });
  const started = new Map<string, number>();
  return {
    onProgress(p: ImportProgress) {
      const key = `${p.layer}/${p.layers}`;
      const since = started.get(key) ?? Date.now();
      started.set(key, since);
      const rate = p.bytes / Math.max((Date.now() - since) / 1000, 0.001);
      bars.update(key, `${verb} ${key}`, p.bytes, p.totalBytes, `${formatBytes(rate)}/s`);
    },
    done() {
      bars.stop();
    },
  };
}

import { formatBytes } from '../output.js';

export { formatBytes };

/** "sha256:0123456789abcdef…" -> "0123456789ab". */
export function shortId(digest: string | null | undefined): string {
  if (!digest) return '-';
  return digest.replace(/^sha256:/, '').slice(0, 12);
}
