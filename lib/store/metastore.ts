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

export type SublevelName = 'meta' | 'layers' | 'images' | 'mounts' | 'volumes' | 'refs';

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
