/**
 * The volume service (moby's volume/service): what the API, the CLI and the mount service use. It validates
 * requests, applies filters and prune rules, and leaves records, refs and locks to the store and the disk to the
 * driver.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { FsckProblem } from '../layers/layer-store.js';
import type { LostAndFound } from '../store/lost-found.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import { LocalDriver } from './local.js';
import { VolumeStore, type VolumeHolder } from './store.js';
import { ANONYMOUS_LABEL, MAX_VOLUME_NAME, VOLUME_NAME_PATTERN, type VolumeRef, type VolumeRecord, type VolumeView } from './types.js';

export interface CreateVolumeRequest {
  Name?: string;
  Driver?: string;
  Labels?: Record<string, string>;
  DriverOpts?: Record<string, string>;
}

/** Docker's filter shape: key -> values, e.g. { label: ["env=prod"], dangling: ["true"] }. */
export type VolumeFilters = Record<string, string[]>;

const LIST_FILTERS = ['dangling', 'label', 'label!', 'name', 'driver'];
const PRUNE_FILTERS = ['label', 'label!', 'all'];

export function checkVolumeName(name: unknown): string {
  if (typeof name !== 'string' || name.length > MAX_VOLUME_NAME || !VOLUME_NAME_PATTERN.test(name)) {
    throw new StrataError('STRATA_BAD_OPTION', `volume name "${String(name)}" is invalid: use at least two of letters, digits, '_', '.' and '-', starting with a letter or digit (a volume name is never a path)`);
  }
  return name;
}

function checkFilters(filters: VolumeFilters, allowed: string[]): void {
  for (const [key, values] of Object.entries(filters)) {
    if (!allowed.includes(key)) throw new StrataError('STRATA_BAD_OPTION', `unknown volume filter "${key}" (valid: ${allowed.join(', ')})`);
    if (!Array.isArray(values) || values.some((v) => typeof v !== 'string')) throw new StrataError('STRATA_BAD_OPTION', `filter "${key}" needs string values`);
  }
}

function truth(key: string, value: string): boolean {
  if (['true', '1'].includes(value.toLowerCase())) return true;
  if (['false', '0'].includes(value.toLowerCase())) return false;
  throw new StrataError('STRATA_BAD_OPTION', `filter ${key}=${value}: use true or false`);
}

/** `label=k` matches any value, `label=k=v` only v; every label filter must match (label! negates). */
function labelsMatch(labels: Record<string, string>, filters: VolumeFilters): boolean {
  const has = (spec: string) => {
    const eq = spec.indexOf('=');
    const key = eq < 0 ? spec : spec.slice(0, eq);
    return key in labels && (eq < 0 || labels[key] === spec.slice(eq + 1));
  };
  return (filters.label ?? []).every(has) && !(filters['label!'] ?? []).some(has);
}

export class VolumeService {
  readonly driver: LocalDriver;
  readonly store: VolumeStore;
  private readonly logger: Logger;
  private readonly metastore: Metastore;
  private readonly lostAndFound: LostAndFound | undefined;

  constructor(metastore: Metastore, logger: Logger, options: { rootDir: string; lostAndFound?: LostAndFound }) {
    this.logger = logger.child({ component: 'volumes' });
    this.metastore = metastore;
    this.lostAndFound = options.lostAndFound;
    const lost = options.lostAndFound;
    this.driver = new LocalDriver(path.join(options.rootDir, 'volumes'), this.logger,
      lost === undefined ? undefined : (dir, name) => lost.quarantine(dir, 'volume', name, 'no volume record names this dir'));
    this.store = new VolumeStore(metastore, this.driver, this.logger);
  }

  /** Loads the store and settles what a crash left on disk. Called once, before the mounts are reconciled. */
  async init(): Promise<void> {
    await mkdir(this.driver.volumesDir, { recursive: true, mode: 0o700 });
    await chmod(this.driver.volumesDir, 0o700);
    await this.store.load();
    await this.driver.recover(this.store.names());
  }

  async create(request: CreateVolumeRequest): Promise<VolumeView> {
    const anonymous = request.Name === undefined || request.Name === '';
    const name = anonymous ? randomBytes(32).toString('hex') : checkVolumeName(request.Name);
    if (request.Driver !== undefined && request.Driver !== '' && request.Driver !== 'local') {
      throw new StrataError('STRATA_UNSUPPORTED', `volume driver "${request.Driver}" is not available (only "local" is)`);
    }
    const labels: Record<string, string> = {};
    for (const [key, value] of Object.entries(request.Labels ?? {})) {
      if (key === '' || typeof value !== 'string') throw new StrataError('STRATA_BAD_OPTION', `label "${key}" needs a string value`);
      labels[key] = value;
    }
    if (anonymous) labels[ANONYMOUS_LABEL] = '';
    const options = await this.driver.validateOptions(request.DriverOpts ?? {});
    return this.store.locks.withLock(name, async () => {
      const existing = this.store.get(name);
      if (existing !== undefined) {
        // Docker answers a create of an existing name with that volume, unless the request asks for something else.
        if (JSON.stringify(existing.Options) !== JSON.stringify(options)) {
          throw new StrataError('STRATA_CONFLICT', `volume "${name}" already exists with other options; remove it first or choose another name`);
        }
        return this.view(existing);
      }
      const record: VolumeRecord = { Name: name, Driver: 'local', CreatedAt: new Date().toISOString(), Labels: labels, Options: options };
      await this.store.createLocked(record);
      this.logger.info({ volume: name, options }, 'volume created');
      return this.view(record);
    });
  }

  list(filters: VolumeFilters = {}): VolumeView[] {
    checkFilters(filters, LIST_FILTERS);
    return this.store.list().filter((record) => {
      const refCount = this.store.holders(record.Name).length;
      for (const value of filters.dangling ?? []) if (truth('dangling', value) !== (refCount === 0)) return false;
      for (const value of filters.driver ?? []) if (value !== record.Driver) return false;
      if (filters.name !== undefined && !filters.name.some((n) => record.Name.includes(n))) return false;
      return labelsMatch(record.Labels, filters);
    }).map((record) => this.view(record));
  }

  async inspect(name: string, options: { size: boolean } = { size: false }): Promise<VolumeView> {
    const record = this.find(name);
    const view = this.view(record);
    if (options.size) view.UsageData.Size = await this.driver.usage(record.Name);
    return view;
  }

  async remove(name: string, options: { force: boolean }): Promise<{ Name: string; Removed: boolean }> {
    checkVolumeName(name);
    return this.store.locks.withLock(name, async () => {
      if (this.store.get(name) === undefined && options.force) return { Name: name, Removed: false };
      await this.store.removeLocked(name);
      this.logger.info({ volume: name }, 'volume removed');
      return { Name: name, Removed: true };
    });
  }

  /** Removes unused volumes: anonymous ones only, unless `all=true` (Docker 23+'s rule); label filters narrow it. */
  async prune(filters: VolumeFilters = {}): Promise<{ VolumesDeleted: string[]; SpaceReclaimed: number }> {
    checkFilters(filters, PRUNE_FILTERS);
    const all = (filters.all ?? []).some((v) => truth('all', v));
    const deleted: string[] = [];
    let reclaimed = 0;
    for (const record of this.store.list()) {
      if (!all && !(ANONYMOUS_LABEL in record.Labels)) continue;
      if (!labelsMatch(record.Labels, filters)) continue;
      await this.store.locks.withLock(record.Name, async () => {
        if (this.store.get(record.Name) === undefined || this.store.holders(record.Name).length > 0) return;
        const size = await this.driver.usage(record.Name);
        await this.store.removeLocked(record.Name);
        deleted.push(record.Name);
        reclaimed += size;
      });
    }
    this.logger.info({ deleted: deleted.length, reclaimed }, 'volumes pruned');
    return { VolumesDeleted: deleted, SpaceReclaimed: reclaimed };
  }

  /**
   * fsck of the volumes (part of `strata fsck`): refs against volume and mount records (read in one snapshot, so a
   * mount create landing meanwhile is seen whole or not at all), records against their dirs, and dirs without a
   * record. Each repair runs under the volume name's lock and checks again first, so it never races a create, a
   * removal or a mount taking a reference.
   */
  async fsck(repair: boolean): Promise<FsckProblem[]> {
    const problems: FsckProblem[] = [];
    const snapshot = await this.metastore.snapshot(['volumes', 'volumeRefs', 'mounts']);
    const records = new Map(snapshot.get('volumes') as Array<[string, VolumeRecord]>);
    const refs = snapshot.get('volumeRefs') as Array<[string, VolumeRef]>;
    const mounts = snapshot.get('mounts') as Array<[string, { Name: string; Mounts?: Array<{ Type: string; Source: string }> }]>;
    const mountIds = new Set(mounts.map(([id]) => id));
    const refKeys = new Set(refs.map(([key]) => key));
    const repairs: Array<{ name: string; run: () => Promise<void> }> = [];

    for (const [key, ref] of refs) {
      if (records.has(ref.Volume) && mountIds.has(ref.MountId)) continue;
      problems.push({ subject: `volume reference ${key}`, problem: `names a ${records.has(ref.Volume) ? 'mount' : 'volume'} that does not exist`, repair: 'remove it', repaired: repair });
      repairs.push({ name: ref.Volume, run: () => this.metastore.batch([{ type: 'del', sublevel: 'volumeRefs', key }]) });
    }
    for (const [mountId, mount] of mounts) {
      for (const name of new Set((mount.Mounts ?? []).filter((m) => m.Type === 'volume').map((m) => m.Source))) {
        if (!records.has(name)) {
          problems.push({ subject: `mount ${mount.Name}`, problem: `attaches volume "${name}", which has no record`, repair: null, repaired: false });
        } else if (!refKeys.has(`${name}|${mountId}`)) {
          problems.push({ subject: `mount ${mount.Name}`, problem: `holds no reference on volume "${name}" it attaches`, repair: 'add the reference', repaired: repair });
          repairs.push({ name, run: async () => {
            if ((await this.metastore.get('mounts', mountId)) === undefined) return;
            const ref: VolumeRef = { Volume: name, MountId: mountId, MountName: mount.Name, Since: new Date().toISOString() };
            await this.metastore.batch([{ type: 'put', sublevel: 'volumeRefs', key: `${name}|${mountId}`, value: ref }]);
          } });
        }
      }
    }
    for (const name of records.keys()) {
      if (!(await this.driver.exists(name))) problems.push({ subject: `volume ${name}`, problem: `its data dir ${this.driver.dataDir(name)} is missing`, repair: null, repaired: false });
    }
    for (const entry of (await readdir(this.driver.volumesDir).catch(() => [] as string[])).sort()) {
      const full = path.join(this.driver.volumesDir, entry);
      const pending = /^\.(staging|trash)-(.+)-[0-9a-f]{8}$/.exec(entry);
      if (pending !== null) {
        problems.push({ subject: full, problem: 'an interrupted volume create or remove left it', repair: 'delete it (it holds no data anyone still wants)', repaired: repair });
        // Under the name's lock no create or removal of that name is running, so the dir is truly left over.
        repairs.push({ name: pending[2]!, run: () => rm(full, { recursive: true, force: true }) });
      } else if (!entry.startsWith('.') && !records.has(entry)) {
        problems.push({ subject: full, problem: 'no volume record names this dir', repair: this.lostAndFound === undefined ? null : 'move it to lost+found', repaired: repair && this.lostAndFound !== undefined });
        const lost = this.lostAndFound;
        if (lost !== undefined) repairs.push({ name: entry, run: async () => {
          if ((await this.metastore.get('volumes', entry)) === undefined) await lost.quarantine(full, 'volume', entry, 'no volume record names this dir');
        } });
      }
    }
    if (repair && repairs.length > 0) {
      for (const { name, run } of repairs) await this.store.locks.withLock(name, run);
      await this.store.load();
    }
    return problems;
  }

  // ---- for union mounts (lib/mounts/attachments.ts) ------------------------------------------------------------

  /** The named volume, created if missing (as `docker run -v name:/path` does); an anonymous one without a name. */
  async ensure(name: string | undefined): Promise<VolumeView> {
    if (name !== undefined) {
      checkVolumeName(name);
      const existing = this.store.get(name);
      if (existing !== undefined) return this.view(existing);
    }
    return this.create({ Name: name });
  }

  /**
   * Mounts the volume's device if it has one; returns the dir to bind. Under the name's lock: two mounts starting
   * at once (as at start-up) would otherwise both see it unmounted and stack two devices on `_data`.
   */
  async prepare(name: string): Promise<string> {
    return this.store.locks.withLock(name, async () => {
      const record = this.find(name);
      await this.driver.mount(record);
      return this.driver.dataDir(name);
    });
  }

  reference(names: readonly string[], holder: VolumeHolder, commit: (ops: BatchOp[]) => Promise<void>): Promise<void> {
    return this.store.reference(names, holder, commit);
  }

  release(names: readonly string[], mountId: string, commit: (ops: BatchOp[]) => Promise<void>): Promise<void> {
    return this.store.release(names, mountId, commit);
  }

  private find(name: string): VolumeRecord {
    if (typeof name !== 'string' || name === '') throw new StrataError('STRATA_BAD_REQUEST', 'name a volume');
    const record = this.store.get(name);
    if (record === undefined) throw new StrataError('STRATA_NOT_FOUND', `no volume named "${name}" (see \`strata volume ls\`)`);
    return record;
  }

  private view(record: VolumeRecord): VolumeView {
    const holders = this.store.holders(record.Name);
    return {
      Name: record.Name,
      Driver: record.Driver,
      Mountpoint: this.driver.dataDir(record.Name),
      CreatedAt: record.CreatedAt,
      Labels: { ...record.Labels },
      Options: { ...record.Options },
      Scope: 'local',
      UsedBy: holders.map((h) => h.MountName),
      UsageData: { Size: -1, RefCount: holders.length },
    };
  }
}
