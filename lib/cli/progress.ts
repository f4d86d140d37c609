/**
 * Progress bars for long transfers (pull, push; import and export can use the same): one bar per item on stderr,
 * drawn by cli-progress, and only when stderr is a terminal and output is not JSON. Otherwise every call is a no-op,
 * so scripts and logs never see escape codes.
 */
import { createRequire } from 'node:module';
import type cliProgressModule from 'cli-progress';
import { formatBytes } from './output.js';

export interface ProgressBars {
  /** False when nothing is drawn (not a terminal, or JSON output): callers may skip gathering progress at all. */
  readonly enabled: boolean;
  /** Creates or moves the bar `key`: `done` of `total` bytes (null: unknown yet), with a short status word. */
  update(key: string, label: string, done: number, total: number | null, status: string): void;
  /** Finishes drawing; the bars stay on screen as the final state. */
  stop(): void;
}

export function progressBars(options: { json?: boolean; stream?: NodeJS.WriteStream } = {}): ProgressBars {
  const stream = options.stream ?? process.stderr;
  if (options.json === true || !stream.isTTY) return { enabled: false, update() {}, stop() {} };
  // Loaded only when bars are drawn: scripts and pipes never pay for it.
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof cliProgressModule;
  const multi = new cliProgress.MultiBar({
    stream,
    format: '{label} [{bar}] {status} {done}/{size}',
    barsize: 30,
    hideCursor: true,
    clearOnComplete: false,
    stopOnComplete: false,
    fps: 10,
    autopadding: true,
  }, cliProgress.Presets.shades_classic);
  const bars = new Map<string, cliProgressModule.SingleBar>();
  return {
    enabled: true,
    update(key, label, done, total, status) {
      const size = total ?? Math.max(done, 1);
      const payload = { label, status: status.padEnd(11), done: formatBytes(done), size: total === null ? '?' : formatBytes(total) };
      let bar = bars.get(key);
      if (bar === undefined) {
        bar = multi.create(size, done, payload);
        bars.set(key, bar);
      } else {
        bar.setTotal(size);
        bar.update(done, payload);
      }
    },
    stop() {
      multi.stop();
    },
  };
}
