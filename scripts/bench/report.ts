/**
 * Medians, ratios and the two outputs: an aligned table for people and JSON for tools.
 *
 * Ratios are always ratios of median times, strata's over the other's: above 1 means strata is slower,
 * whatever unit the workload is shown in (for MB/s workloads the time ratio is the inverse of the
 * throughput ratio).
 */
import type { ImplementationName } from './mounts.js';
import type { CacheState, Metric } from './workloads.js';

export interface CellResult {
  /** Seconds of each successful run, in run order. */
  samples: number[];
  medianSeconds?: number;
  /** CPU seconds the FUSE server used during each run (empty for the kernel): shows where the time goes. */
  serverCpuSamples: number[];
  serverCpuMedianSeconds?: number;
  /** The median shown in the workload's unit (seconds or MB/s). */
  value?: number;
  error?: { code: string; message: string };
}

export interface WorkloadReport {
  name: string;
  description: string;
  cache: CacheState;
  unit: Metric;
  bytes?: number;
  results: Partial<Record<ImplementationName, CellResult>>;
  /** e.g. "strata/kernel": median time of strata divided by kernel's. */
  ratios: Record<string, number>;
}

export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/** Fills in medians, values and ratios once all runs of a workload are done. */
export function summarize(report: WorkloadReport): void {
  for (const cell of Object.values(report.results)) {
    if (!cell || cell.error) continue;
    cell.medianSeconds = median(cell.samples);
    cell.serverCpuMedianSeconds = median(cell.serverCpuSamples);
    if (cell.medianSeconds !== undefined) {
      cell.value = report.unit === 'MB/s' && report.bytes ? report.bytes / 1e6 / cell.medianSeconds : cell.medianSeconds;
    }
  }
  const strata = report.results.strata;
  for (const other of ['kernel', 'fuse-overlayfs'] as const) {
    const base = report.results[other];
    if (strata?.medianSeconds !== undefined && base?.medianSeconds !== undefined && base.medianSeconds > 0) {
      report.ratios[`strata/${other}`] = strata.medianSeconds / base.medianSeconds;
    }
  }
}

function formatValue(cell: CellResult | undefined, unit: Metric): string {
  if (!cell) return '-';
  if (cell.error) return `ERROR ${cell.error.code}`;
  if (cell.value === undefined) return '-';
  return unit === 'MB/s' ? `${cell.value.toFixed(0)} MB/s` : `${cell.value < 10 ? cell.value.toFixed(3) : cell.value.toFixed(2)} s`;
}

export function formatTable(reports: readonly WorkloadReport[], implementations: readonly ImplementationName[]): string {
  const ratioNames = implementations.includes('strata')
    ? implementations.filter((i) => i !== 'strata').map((i) => `strata/${i}`)
    : [];
  const headers = ['workload', 'cache', ...implementations, ...ratioNames.map((r) => `${r} (time)`)];
  const rows = reports.map((r) => [
    r.name,
    r.cache,
    ...implementations.map((i) => formatValue(r.results[i], r.unit)),
    ...ratioNames.map((name) => (r.ratios[name] === undefined ? '-' : `${r.ratios[name].toFixed(2)}x`)),
  ]);
  return alignedTable(headers, rows, 2);
}

export function formatCpuTable(reports: readonly WorkloadReport[], implementations: readonly ImplementationName[]): string {
  const headers = ['workload', ...implementations];
  const rows = reports.map((r) => [
    r.name,
    ...implementations.map((i) => {
      const cpu = r.results[i]?.serverCpuMedianSeconds;
      return cpu === undefined ? '-' : `${cpu.toFixed(2)} s`;
    }),
  ]);
  return alignedTable(headers, rows, 1);
}

/** Text columns (the first `leftAligned`) pad right; figures pad left so their units line up. */
function alignedTable(headers: readonly string[], rows: readonly (readonly string[])[], leftAligned: number): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i < leftAligned ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
