/** Shared CLI output helpers: tables, JSON, and error reporting with stable codes. */
import { StrataError } from '../errors.js';

/** Prints rows as an aligned table with a header; prints nothing but the header when empty. */
export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  process.stdout.write(`${line(headers)}\n`);
  for (const row of rows) process.stdout.write(`${line(row)}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Prints an error as "strata: CODE: message" and returns the exit code (1 for errors, 2 for usage). */
export function reportCliError(err: unknown): number {
  if (err instanceof StrataError) {
    process.stderr.write(`strata: ${err.code}: ${err.message}\n`);
    return err.code === 'STRATA_BAD_OPTION' ? 2 : 1;
  }
  const e = err as { code?: string; message?: string };
  process.stderr.write(`strata: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  return 1;
}

/** 1536 -> "1.5 KiB". */
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
