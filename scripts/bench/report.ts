/**
 * Medians, ranges, ratios and the outputs: aligned tables for people and JSON for tools.
 *
 * Ratios are always ratios of times, a strata candidate's over another candidate's: above 1 means that strata
 * candidate is slower, whatever unit the workload is shown in (for MB/s workloads the time ratio is the inverse
 * of the throughput ratio). The headline ratio is of the medians; its range comes from the per-round ratios
 * (round i of one over round i of the other: the candidates alternate inside a round, so a round shares the
 * machine's state of the moment).
 */
import { isStrataCandidate } from './mounts.js';
import type { CacheState, Metric } from './workloads.js';

export interface CellResult {
  /** Seconds of each successful run, in run order. */
  samples: number[];
  medianSeconds?: number;
  minSeconds?: number;
  maxSeconds?: number;
  /** CPU seconds the FUSE server used during each run (empty for the kernel): shows where the time goes. */
  serverCpuSamples: number[];
  serverCpuMedianSeconds?: number;
  /** The server's peak RSS (VmHWM, KiB) at the end of each run's timed command; empty for the kernel. */
  rssPeakKiBSamples?: number[];
  rssPeakMaxKiB?: number;
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
  /** By candidate name (kernel, fuse-overlayfs, strata, strata-fuse-native, ...). */
  results: Partial<Record<string, CellResult>>;
  /** e.g. "strata/kernel": median time of strata divided by kernel's. */
  ratios: Record<string, number>;
  /** The same keys: lowest and highest of the per-round ratios. */
  ratioRanges?: Record<string, { min: number; max: number }>;
}

export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/**
 * The ratio columns for a list of candidates: every strata candidate over every other candidate that is not a
 * strata variant, then `strata` over each other strata variant (the default against the alternatives).
 */
export function ratioPairs(candidates: readonly string[]): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  for (const mine of candidates.filter(isStrataCandidate)) {
    for (const other of candidates) if (!isStrataCandidate(other)) pairs.push([mine, other]);
  }
  if (candidates.includes('strata')) for (const other of candidates) if (other !== 'strata' && isStrataCandidate(other)) pairs.push(['strata', other]);
  return pairs;
}

/** Fills in medians, ranges, values and ratios once all runs of a workload are done. */
export function summarize(report: WorkloadReport, candidates: readonly string[] = Object.keys(report.results)): void {
  for (const cell of Object.values(report.results)) {
    if (!cell || cell.error) continue;
    cell.medianSeconds = median(cell.samples);
    if (cell.samples.length) {
      cell.minSeconds = Math.min(...cell.samples);
      cell.maxSeconds = Math.max(...cell.samples);
    }
    cell.serverCpuMedianSeconds = median(cell.serverCpuSamples);
    if (cell.rssPeakKiBSamples?.length) cell.rssPeakMaxKiB = Math.max(...cell.rssPeakKiBSamples);
    if (cell.medianSeconds !== undefined) {
      cell.value = report.unit === 'MB/s' && report.bytes ? report.bytes / 1e6 / cell.medianSeconds : cell.medianSeconds;
    }
  }
  for (const [mine, other] of ratioPairs(candidates)) {
    const a = report.results[mine];
    const b = report.results[other];
    if (a?.error || b?.error || a?.medianSeconds === undefined || b?.medianSeconds === undefined || !(b.medianSeconds > 0)) continue;
    const key = `${mine}/${other}`;
    report.ratios[key] = a.medianSeconds / b.medianSeconds;
    const rounds = Math.min(a.samples.length, b.samples.length);
    const perRound = Array.from({ length: rounds }, (_, i) => (a.samples[i] ?? 0) / (b.samples[i] ?? 1)).filter(Number.isFinite);
    if (perRound.length) (report.ratioRanges ??= {})[key] = { min: Math.min(...perRound), max: Math.max(...perRound) };
  }
}

function seconds(value: number): string {
  return value < 10 ? value.toFixed(3) : value.toFixed(2);
}

function formatValue(cell: CellResult | undefined, unit: Metric, bytes: number | undefined): string {
  if (!cell) return '-';
  if (cell.error) return `ERROR ${cell.error.code}`;
  if (cell.value === undefined) return '-';
  const ranged = cell.samples.length > 1 && cell.minSeconds !== undefined && cell.maxSeconds !== undefined;
  if (unit === 'MB/s') {
    const mbs = (s: number) => ((bytes ?? 0) / 1e6 / s).toFixed(0);
    // The fastest run is the highest throughput: the range reads low-high.
    return `${cell.value.toFixed(0)} MB/s${ranged ? ` (${mbs(cell.maxSeconds!)}-${mbs(cell.minSeconds!)})` : ''}`;
  }
  return `${seconds(cell.value)} s${ranged ? ` (${seconds(cell.minSeconds!)}-${seconds(cell.maxSeconds!)})` : ''}`;
}

/** Medians per candidate, with the min-max of the runs in parentheses when there was more than one. */
export function formatTable(reports: readonly WorkloadReport[], candidates: readonly string[]): string {
  const headers = ['workload', 'cache', ...candidates];
  const rows = reports.map((r) => [r.name, r.cache, ...candidates.map((c) => formatValue(r.results[c], r.unit, r.bytes))]);
  return alignedTable(headers, rows, 2);
}

/** Time ratios of the medians, with the min-max of the per-round ratios; empty when there is nothing to divide. */
export function formatRatioTable(reports: readonly WorkloadReport[], candidates: readonly string[]): string {
  const keys = ratioPairs(candidates).map(([a, b]) => `${a}/${b}`);
  if (keys.length === 0) return '';
  const rows = reports.map((r) => [
    r.name,
    ...keys.map((key) => {
      const ratio = r.ratios[key];
      if (ratio === undefined) return '-';
      const range = r.ratioRanges?.[key];
      return `${ratio.toFixed(2)}x${range && range.min !== range.max ? ` (${range.min.toFixed(2)}-${range.max.toFixed(2)})` : ''}`;
    }),
  ]);
  return alignedTable(['workload', ...keys], rows, 1);
}

export function formatCpuTable(reports: readonly WorkloadReport[], candidates: readonly string[]): string {
  const headers = ['workload', ...candidates];
  const rows = reports.map((r) => [
    r.name,
    ...candidates.map((c) => {
      const cpu = r.results[c]?.serverCpuMedianSeconds;
      return cpu === undefined ? '-' : `${cpu.toFixed(2)} s`;
    }),
  ]);
  return alignedTable(headers, rows, 1);
}

/** The FUSE servers' peak RSS per workload, the highest over the runs (the kernel has no server: n/a). */
export function formatRssTable(reports: readonly WorkloadReport[], candidates: readonly string[]): string {
  const headers = ['workload', ...candidates];
  const rows = reports.map((r) => [
    r.name,
    ...candidates.map((c) => {
      if (c === 'kernel') return 'n/a';
      const kib = r.results[c]?.rssPeakMaxKiB;
      // fuse-overlayfs stays near 1 MiB: one decimal below 10 MiB keeps it from reading as 0.
      return kib === undefined ? '-' : `${(kib / 1024).toFixed(kib < 10 * 1024 ? 1 : 0)} MiB`;
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
