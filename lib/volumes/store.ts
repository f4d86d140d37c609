/**
 * The volume store (moby's volume/service store): volume records and their references, in LevelDB and in memory.
 *
 * Invariants:
 *  - Every record in the `volumes` sublevel has a `<root>/volumes/<name>` dir; the dir is made before the record
 *    is written and moved to trash before the record is deleted (the driver's recover() settles a crash between).
 *  - A reference (`volumeRefs`, key `<volume>|<mountId>`) exists exactly while the mount record holding it
 *    exists: both are written by one Metastore.batch (see reference/release), and refs of mounts that have no
 *    record are dropped at load.
 *  - Operations on one name are serialised by a per-name lock: a removal cannot slip between a mount's check that
 *    a volume exists and the batch that references it.
 */
import type { BatchOp, Metastore } from '../store/metastore.js';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { LocalDriver } from './local.js';
import { KeyedLock } from '../util/keyed-lock.js';
import type { VolumeRecord, VolumeRef } from './types.js';

/** Who holds a reference: a union mount, by id (stable) and name (for messages). */
export interface VolumeHolder {
  mountId: string;
  mountName: string;
}

const refKey = (volume: string, mountId: string) => `${volume}|${mountId}`;

export class VolumeStore {
  private readonly metastore: Metastore;
  private readonly driver: LocalDriver;
  private readonly logger: Logger;
  private readonly records = new Map<string, VolumeRecord>();
  /** volume name -> mount id -> ref. */
  private readonly refs = new Map<string, Map<string, VolumeRef>>();
  readonly locks = new KeyedLock();

  constructor(metastore: Metastore, driver: LocalDriver, logger: Logger) {
    this.metastore = metastore;
    this.driver = driver;
    this.logger = logger;
  }

  /** Loads records and refs; drops (in one batch) refs whose volume or mount record is gone. */
  async load(): Promise<void> {
    this.records.clear();
    this.refs.clear();
    for (const [name, record] of await this.metastore.entries<VolumeRecord>('volumes')) this.records.set(name, record);
    const mountIds = new Set((await this.metastore.entries<unknown>('mounts')).map(([id]) => id));
    const stale: BatchOp[] = [];
    for (const [key, ref] of await this.metastore.entries<VolumeRef>('volumeRefs')) {
      if (!this.records.has(ref.Volume) || !mountIds.has(ref.MountId)) {
        this.logger.warn({ volume: ref.Volume, mount: ref.MountName }, 'dropping a volume reference whose volume or mount is gone');
        stale.push({ type: 'del', sublevel: 'volumeRefs', key });
        continue;
      }
      this.remember(ref);
    }
    await this.metastore.batch(stale);
  }

  names(): ReadonlySet<string> {
    return new Set(this.records.keys());
  }

  get(name: string): VolumeRecord | undefined {
    return this.records.get(name);
  }

  list(): VolumeRecord[] {
    return [...this.records.values()].sort((a, b) => a.CreatedAt.localeCompare(b.CreatedAt) || a.Name.localeCompare(b.Name));
  }

  holders(name: string): VolumeRef[] {
    return [...(this.refs.get(name)?.values() ?? [])].sort((a, b) => a.MountName.localeCompare(b.MountName));
  }

  /** Creates the dir, then the record. Call under the name's lock. */
  async createLocked(record: VolumeRecord): Promise<void> {
    await this.driver.create(record.Name);
    try {
      await this.metastore.batch([{ type: 'put', sublevel: 'volumes', key: record.Name, value: record }]);
    } catch (err) {
      const trash = await this.driver.moveToTrash(record);
      await this.driver.deleteTrash(trash);
      throw err;
    }
    this.records.set(record.Name, record);
  }

  /** Removes an unreferenced volume: dir to trash, record deleted, trash deleted last. Call under the name's lock. */
  async removeLocked(name: string): Promise<void> {
    const record = this.records.get(name);
    if (record === undefined) throw new StrataError('STRATA_NOT_FOUND', `no volume named "${name}" (see \`strata volume ls\`)`);
    const holders = this.holders(name);
    if (holders.length > 0) {
      throw new StrataError('STRATA_IN_USE', `volume "${name}" is in use by mount ${holders.map((h) => `"${h.MountName}"`).join(', ')}; remove those mounts first (\`strata mount rm\`)`);
    }
    const trash = await this.driver.moveToTrash(record);
    try {
      await this.metastore.batch([{ type: 'del', sublevel: 'volumes', key: name }]);
    } catch (err) {
      await this.driver.restoreFromTrash(trash, name);
      throw err;
    }
    this.records.delete(name);
    await this.driver.deleteTrash(trash);
  }

  /**
   * References `names` for `holder`: under every name's lock, checks that each volume exists, then calls `commit`
   * with the ref puts so the caller writes them in the same batch as its own record.
   */
  async reference(names: readonly string[], holder: VolumeHolder, commit: (ops: BatchOp[]) => Promise<void>): Promise<void> {
    await this.locks.withLocks(names, async () => {
      const since = new Date().toISOString();
      const refs: VolumeRef[] = [];
      for (const name of new Set(names)) {
        if (!this.records.has(name)) throw new StrataError('STRATA_NOT_FOUND', `no volume named "${name}" (it was removed meanwhile)`);
        refs.push({ Volume: name, MountId: holder.mountId, MountName: holder.mountName, Since: since });
      }
      await commit(refs.map((ref) => ({ type: 'put', sublevel: 'volumeRefs', key: refKey(ref.Volume, ref.MountId), value: ref })));
      for (const ref of refs) this.remember(ref);
    });
  }

  /** Drops `holder`'s refs on `names`, with the ref deletions handed to `commit` for the caller's batch. */
  async release(names: readonly string[], mountId: string, commit: (ops: BatchOp[]) => Promise<void>): Promise<void> {
    await this.locks.withLocks(names, async () => {
      const unique = [...new Set(names)];
      await commit(unique.map((name) => ({ type: 'del', sublevel: 'volumeRefs', key: refKey(name, mountId) })));
      for (const name of unique) {
        const held = this.refs.get(name);
        held?.delete(mountId);
        if (held !== undefined && held.size === 0) {
          this.refs.delete(name);
          const record = this.records.get(name);
          // The last user is gone: a device-backed volume is unmounted, as moby's local driver does.
          if (record !== undefined) await this.driver.unmount(record).catch((err: unknown) => this.logger.error({ err, volume: name }, 'could not unmount the volume device'));
        }
      }
    });
  }

  private remember(ref: VolumeRef): void {
    let held = this.refs.get(ref.Volume);
    if (held === undefined) {
      held = new Map();
      this.refs.set(ref.Volume, held);
    }
    held.set(ref.MountId, ref);
  }
}
