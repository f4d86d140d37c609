/**
 * The LevelDB metastore: one database per state dir (`<root>/db`), one sublevel per record kind.
 *
 * Invariants:
 *  - Records that change together are written in one `batch()` across sublevels (atomic in LevelDB).
 *  - Every write is synced (`sync: true`) before it resolves: a change the API acknowledges survives a crash or a
 *    power loss.
 *  - Writes are serialised here, one at a time. After a write fails (ENOSPC, EIO, an injected fault) the store is
 *    `failed`: LevelDB's log may end in a torn record, and LevelDB would go on appending after it, so records
 *    acknowledged later would be dropped as "checksum mismatch" at the next open. A failed store accepts no write
 *    until it has been closed and reopened cleanly (reopening replays the log, drops the torn, never-acknowledged
 *    tail and starts a new log). Each write attempted while failed tries that reopen first, and fails with
 *    STRATA_STORE_FAILED when it cannot.
 *  - `meta/schema` holds SCHEMA_VERSION; opening a newer schema fails instead of guessing.
 *  - Values are JSON. Keys are the record's natural id (chainID, image name, mount id, volume name).
 */
import { access, constants as fsConstants } from 'node:fs/promises';
import { Level } from 'level';
import type { Logger } from '../log.js';
import { StrataError, isErrno } from '../errors.js';

export const SCHEMA_VERSION = 1;

/**
 * Record kinds. Layer store: `layers` (chain records by chainID), `layerContents` (extracted content by diffID;
 * several chains can share one), `refs` (holders of layers, key `<chainID>|<holder>`), `images` (by image id,
 * the config digest) and `imageNames` (`name:tag` -> image id). Mounts: `mounts` (by id). Volumes: `volumes` (by
 * name) and `volumeRefs` (holders of volumes, key `<volume>|<mountId>`, written with the mount record).
 * `registry`: where blobs are known to be in registries and which blob a stored layer was pushed as
 * (lib/registry/blob-records.ts; a cache, never authoritative).
 */
export type SublevelName = 'meta' | 'layers' | 'layerContents' | 'images' | 'imageNames' | 'mounts' | 'volumes' | 'volumeRefs' | 'refs' | 'registry';

/** One operation of an atomic multi-sublevel batch (see Metastore.batch). */
export type BatchOp =
  | { type: 'put'; sublevel: SublevelName; key: string; value: unknown }
  | { type: 'del'; sublevel: SublevelName; key: string };

/**
 * A test-only fault hook, passed in by whoever opens the store: called before each write with its operations; an
 * error it returns is treated exactly like a write error from LevelDB.
 */
export type WriteFaultHook = (ops: readonly BatchOp[]) => Error | undefined;

export interface MetastoreOptions {
  faults?: WriteFaultHook;
}

export class Metastore {
  private db: Level<string, unknown>;
  private readonly dbDir: string;
  private readonly logger: Logger;
  private readonly faults: WriteFaultHook | undefined;
  /** Set by a failed write; cleared only by a clean reopen. */
  private failure: Error | undefined;
  private closed = false;
  /** Tail of the write queue (writes and reopens run one at a time). */
  private writing: Promise<unknown> = Promise.resolve();

  private constructor(db: Level<string, unknown>, dbDir: string, logger: Logger, options: MetastoreOptions) {
    this.db = db;
    this.dbDir = dbDir;
    this.logger = logger;
    this.faults = options.faults;
  }

  static async open(dbDir: string, logger: Logger, options: MetastoreOptions = {}): Promise<Metastore> {
    const db = await openLevel(dbDir);
    const store = new Metastore(db, dbDir, logger.child({ component: 'metastore' }), options);
    try {
      await store.checkSchema();
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
    }
    return store;
  }

  /** Why the store refuses writes, or undefined when it accepts them. */
  get failed(): Error | undefined {
    return this.failure;
  }

  /**
   * A JSON sublevel of the database as it is open now. For reads only, and not to be kept: a reopen after a
   * failure replaces the database handle. Writes go through batch().
   */
  sublevel<V>(name: SublevelName) {
    return this.db.sublevel<string, V>(name, { valueEncoding: 'json' });
  }

  /** Writes every operation atomically and durably: all of them land, or none. */
  async batch(ops: readonly BatchOp[]): Promise<void> {
    if (ops.length === 0) return;
    await this.serialised(async () => {
      await this.ensureWritable();
      const db = this.db;
      const injected = this.faults?.(ops);
      try {
        if (injected !== undefined) throw injected;
        await db.batch(
          ops.map((op) =>
            op.type === 'put'
              ? { type: 'put' as const, sublevel: this.sublevelOf(db, op.sublevel), key: op.key, value: op.value }
              : { type: 'del' as const, sublevel: this.sublevelOf(db, op.sublevel), key: op.key },
          ),
          { sync: true },
        );
      } catch (err) {
        this.failure = err as Error;
        this.logger.error({ err, ops: ops.length }, 'metadata write failed; refusing changes until the store reopens cleanly');
        throw storeFailed(this.dbDir, err);
      }
    });
  }

  async put(name: SublevelName, key: string, value: unknown): Promise<void> {
    await this.batch([{ type: 'put', sublevel: name, key, value }]);
  }

  async del(name: SublevelName, key: string): Promise<void> {
    await this.batch([{ type: 'del', sublevel: name, key }]);
  }

  /** Every [key, value] of a sublevel, in key order; `prefix` restricts to keys starting with it. */
  async entries<V>(name: SublevelName, prefix?: string): Promise<Array<[string, V]>> {
    await this.ensureReadable();
    const range = prefix === undefined ? {} : { gte: prefix, lt: `${prefix}\uffff` };
    return this.sublevel<V>(name).iterator(range).all();
  }

  /**
   * Several sublevels read from one LevelDB snapshot (one iterator over the whole key space), so that records and
   * the references derived from them are seen as of one instant.
   */
  async snapshot(names: readonly SublevelName[]): Promise<Map<SublevelName, Array<[string, unknown]>>> {
    await this.ensureReadable();
    const out = new Map<SublevelName, Array<[string, unknown]>>(names.map((n) => [n, []]));
    const raw = this.db.iterator<string, string>({ keyEncoding: 'utf8', valueEncoding: 'utf8' });
    try {
      for await (const [key, value] of raw) {
        // Sublevel keys are `!<name>!<key>` (abstract-level's default separator).
        const end = key.indexOf('!', 1);
        if (key[0] !== '!' || end < 0) continue;
        const list = out.get(key.slice(1, end) as SublevelName);
        if (list !== undefined) list.push([key.slice(end + 1), JSON.parse(value) as unknown]);
      }
    } finally {
      await raw.close();
    }
    return out;
  }

  async get<V>(name: SublevelName, key: string): Promise<V | undefined> {
    await this.ensureReadable();
    return this.sublevel<V>(name).get(key);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.serialised(async () => {
      if (this.db.status === 'open' || this.db.status === 'opening') await this.db.close();
    });
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  private sublevelOf(db: Level<string, unknown>, name: SublevelName) {
    return db.sublevel<string, unknown>(name, { valueEncoding: 'json' });
  }

  private serialised<T>(work: () => Promise<T>): Promise<T> {
    const run = this.writing.then(work, work);
    this.writing = run.catch(() => undefined);
    return run;
  }

  /** Runs inside the write queue: a failed store is reopened before it takes another write. */
  private async ensureWritable(): Promise<void> {
    if (this.closed) throw new StrataError('STRATA_STORE_FAILED', `the metadata store at ${this.dbDir} is closed`);
    if (this.failure !== undefined || this.db.status !== 'open') await this.reopen();
  }

  /** Reads use the open handle, even while failed (what it holds was acknowledged); a closed one is reopened. */
  private async ensureReadable(): Promise<void> {
    if (this.db.status === 'open') return;
    await this.serialised(async () => {
      if (this.db.status !== 'open') await this.ensureWritable();
    });
  }

  private async reopen(): Promise<void> {
    const cause = this.failure;
    if (this.db.status === 'open' || this.db.status === 'opening') await this.db.close().catch(() => undefined);
    try {
      this.db = await openLevel(this.dbDir);
    } catch (err) {
      this.failure ??= err as Error;
      this.logger.error({ err }, 'metadata store could not be reopened; still refusing changes');
      throw storeFailed(this.dbDir, err, cause);
    }
    this.failure = undefined;
    this.logger.warn({ previousError: cause?.message }, 'metadata store reopened cleanly; accepting changes again');
  }

  private async checkSchema(): Promise<void> {
    const version = await this.get<number>('meta', 'schema');
    if (version === undefined) {
      await this.put('meta', 'schema', SCHEMA_VERSION);
      this.logger.info({ schema: SCHEMA_VERSION }, 'initialised metadata store');
    } else if (version > SCHEMA_VERSION) {
      throw new StrataError('STRATA_STORE_CORRUPT', `metadata schema ${version} is newer than this Strata (${SCHEMA_VERSION})`);
    }
  }
}

/**
 * Opens LevelDB and names the real cause of a failure: LevelDB reports every open failure as one code, but a held
 * LOCK (another process), a permission problem, a corrupt database and an I/O error need different actions.
 */
async function openLevel(dbDir: string): Promise<Level<string, unknown>> {
  const db = new Level<string, unknown>(dbDir, { valueEncoding: 'json' });
  try {
    await db.open();
    return db;
  } catch (err) {
    throw await openError(dbDir, err);
  }
}

async function openError(dbDir: string, err: unknown): Promise<StrataError> {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const detail = cause?.message ?? (err as Error).message;
  if (cause?.code === 'LEVEL_LOCKED') {
    return new StrataError('STRATA_LOCKED', `cannot open the metadata store at ${dbDir}: another process holds its lock (${detail})`, { cause: err });
  }
  const denied = await access(dbDir, fsConstants.R_OK | fsConstants.W_OK | fsConstants.X_OK).then(() => false, (e: unknown) => isErrno(e, 'EACCES', 'EPERM'));
  if (denied || /Permission denied|Operation not permitted/.test(detail)) {
    return new StrataError('STRATA_STORE_ACCESS', `cannot open the metadata store at ${dbDir}: permission denied (${detail}); run as the user that owns the state dir (root for /var/lib/strata), or use the daemon through its socket`, { cause: err });
  }
  if (cause?.code === 'LEVEL_CORRUPTION') {
    return new StrataError('STRATA_STORE_CORRUPT', `the metadata store at ${dbDir} is corrupt: ${detail}`, { cause: err });
  }
  return new StrataError('STRATA_STORE_FAILED', `cannot open the metadata store at ${dbDir}: ${detail}`, { cause: err });
}

function storeFailed(dbDir: string, err: unknown, earlier?: Error): StrataError {
  const detail = (err as Error).message ?? String(err);
  const first = earlier !== undefined && earlier.message !== detail ? ` (after an earlier write failure: ${earlier.message})` : '';
  return new StrataError('STRATA_STORE_FAILED', `the metadata store at ${dbDir} cannot take changes: ${detail}${first}; nothing was changed. Free space or fix the state dir; the next change retries`, { cause: err });
}
