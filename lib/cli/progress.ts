/**
 * Progress bars for long transfers (pull, push; import and export can use the same): one bar per item on stderr,
 * drawn by cli-progress, and only when stderr is a terminal and output is not JSON. Otherwise every call is a no-op,
 * so scripts and logs never see escape codes.
 */
import cliProgress from 'cli-progress';

export interface ProgressBars {
  /** Creates or moves the bar `key`: `done` of `total` bytes (null: unknown yet), with a short status word. */
  update(key: string, label: string, done: number, total: number | null, status: string): void;
  /** Finishes drawing; the bars stay on screen as the final state. */
  stop(): void;
}

export function progressBars(options: { json?: boolean; stream?: NodeJS.WriteStream } = {}): ProgressBars {
  const stream = options.stream ?? process.stderr;
  if (options.json === true || !stream.isTTY) return { update() {}, stop() {} };
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
  const bars = new Map<string, cliProgress.SingleBar>();
  return {
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

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}
