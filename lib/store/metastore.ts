/**
 * The LevelDB metastore: one database per state dir (`<root>/db`), one sublevel per record kind.
 *
 * Invariants:
 *  - Records that change together are written in one `batch()` across sublevels (atomic in LevelDB).
 *  - `meta/schema` holds SCHEMA_VERSION; opening a newer schema fails instead of guessing.
 *  - Values are JSON. Keys are the record's natural id (chainID, image name, mount name, volume name).
 */
import { Level } from 'level';
import type { Logger } from '../log.js';
import { StrataError } from '../errors.js';

export const SCHEMA_VERSION = 1;

export type Sublevel<V> = ReturnType<Level<string, string>['sublevel']> & {
  // sublevels are typed by the caller via valueEncoding: 'json'
  readonly __value?: V;
};

/**
 * Record kinds. Layer store: `layers` (chain records by chainID), `layerContents` (extracted content by diffID;
 * several chains can share one), `refs` (holders of layers, key `<chainID>|<holder>`), `images` (by image id,
 * the config digest) and `imageNames` (`name:tag` -> image id).
 */
export type SublevelName = 'meta' | 'layers' | 'layerContents' | 'images' | 'imageNames' | 'mounts' | 'volumes' | 'refs';

/** One operation of an atomic multi-sublevel batch (see Metastore.batch). */
export type BatchOp =
  | { type: 'put'; sublevel: SublevelName; key: string; value: unknown }
  | { type: 'del'; sublevel: SublevelName; key: string };

export class Metastore {
  readonly db: Level<string, unknown>;
  private readonly logger: Logger;

  private constructor(db: Level<string, unknown>, logger: Logger) {
    this.db = db;
    this.logger = logger;
  }

  static async open(dbDir: string, logger: Logger): Promise<Metastore> {
    const db = new Level<string, unknown>(dbDir, { valueEncoding: 'json' });
    try {
      await db.open();
    } catch (err) {
      throw new StrataError('STRATA_LOCKED', `cannot open the metadata store at ${dbDir}; is another daemon using it?`, { cause: err });
    }
    const store = new Metastore(db, logger.child({ component: 'metastore' }));
    await store.checkSchema();
    return store;
  }

  /** A JSON sublevel for one record kind. */
  sublevel<V>(name: SublevelName) {
    return this.db.sublevel<string, V>(name, { valueEncoding: 'json' });
  }

  /** Writes every operation atomically: all of them land, or none. */
  async batch(ops: readonly BatchOp[]): Promise<void> {
    if (ops.length === 0) return;
    await this.db.batch(
      ops.map((op) =>
        op.type === 'put'
          ? { type: 'put' as const, sublevel: this.sublevel(op.sublevel), key: op.key, value: op.value }
          : { type: 'del' as const, sublevel: this.sublevel(op.sublevel), key: op.key },
      ),
    );
  }

  /** Every [key, value] of a sublevel, in key order; `prefix` restricts to keys starting with it. */
  async entries<V>(name: SublevelName, prefix?: string): Promise<Array<[string, V]>> {
    const range = prefix === undefined ? {} : { gte: prefix, lt: `${prefix}\uffff` };
    return this.sublevel<V>(name).iterator(range).all();
  }

  async get<V>(name: SublevelName, key: string): Promise<V | undefined> {
    return this.sublevel<V>(name).get(key);
  }

  private async checkSchema(): Promise<void> {
    const meta = this.sublevel<number>('meta');
    const version = await meta.get('schema');
    if (version === undefined) {
      await meta.put('schema', SCHEMA_VERSION);
      this.logger.info({ schema: SCHEMA_VERSION }, 'initialised metadata store');
    } else if (version > SCHEMA_VERSION) {
      throw new StrataError('STRATA_STORE_CORRUPT', `metadata schema ${version} is newer than this Strata (${SCHEMA_VERSION})`);
    }
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
