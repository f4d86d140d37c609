/**
 * Mutual exclusion for async work, the one implementation the stores and services share.
 *
 * Lock: operations run one at a time in call order; a failed operation does not stop the ones queued behind it.
 * KeyedLock (moby's `locker`): the same per key; operations on different keys run concurrently. Keys are taken in
 * sorted order when several are needed, so two callers that need overlapping sets cannot deadlock.
 */
export class Lock {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const run = this.tail.then(work, work);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Resolves once everything queued so far has finished (never rejects). */
  async idle(): Promise<void> {
    await this.tail;
  }
}

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
