/** Bounded parallelism for the per-layer work of pulls and imports. */
import { StrataError } from '../errors.js';

/**
 * Runs `work` on every item, at most `limit` at a time, in item order. After the first failure no new item starts,
 * `signal` aborts (with that error as its reason) so that running items can stop early, and once every running
 * item has settled the first error is thrown. Work that succeeded before or alongside a failure is the caller's
 * to undo: it learns of it through its own bookkeeping, since nothing is returned on failure.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, work: (item: T, index: number, signal: AbortSignal) => Promise<R>): Promise<R[]> {
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > 32) throw new StrataError('STRATA_BAD_OPTION', `concurrency ${limit} must be between 1 and 32`);
  const controller = new AbortController();
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  let failed: { err: unknown } | null = null;
  const worker = async () => {
    while (failed === null && next < items.length) {
      const i = next++;
      try {
        results[i] = await work(items[i]!, i, controller.signal);
      } catch (err) {
        if (failed === null) {
          failed = { err };
          controller.abort(err);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== null) throw (failed as { err: unknown }).err;
  return results;
}
