/**
 * Per-key mutual exclusion (moby's `locker`): operations on one volume name run one at a time, operations on
 * different names run concurrently. Keys are locked in sorted order when several are taken, so two callers that
 * need overlapping sets cannot deadlock.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  async withLocks<T>(keys: readonly string[], work: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(keys)].sort();
    const take = async (i: number): Promise<T> => (i >= sorted.length ? work() : this.withLock(sorted[i]!, () => take(i + 1)));
    return take(0);
  }

  async withLock<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const run = previous.then(work, work);
    const tail = run.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await run;
    } finally {
      // Forget the key once nobody queued behind us, so the map does not grow with every name ever used.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
