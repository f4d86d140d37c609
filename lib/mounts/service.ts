/**
 * The mount service: creates, starts, stops and removes union mounts (the records and their dirs) and reconciles them
 * at start-up; the helper process serving each mount is supervised by supervisor.ts.
 *
 * On-disk layout under the state dir:
 *   mounts/<id>/upper, mounts/<id>/work   one writable layer per mount
 *   mounts/.staging-<id>                   a mount being created (renamed into place when complete)
 *   mounts/.trash-<id>                     a mount being deleted (deleted after its record is gone)
 *   retained/<name>-<id>/upper            uppers kept by `rm --keep-upper`
 *
 * Invariants:
 *  - A record exists in the `mounts` sublevel for every mounts/<id> dir. The record is written only after the dir is
 *    in place (renamed from .staging-<id>, parent fsynced). A mounts/<id> dir without a record may still hold a
 *    user's files (a record lost to a damaged log), so start-up moves it to <root>/lost+found, never deletes it.
 *    .staging-<id> (never recorded, never mounted) and .trash-<id> (record already deleted by `mount rm`) hold no
 *    data anyone still wants and are deleted.
 *  - A record and its layer references are written in one batch (LayerProvider.writeWithReferences).
 *  - `Desired` is what the user asked for and survives restarts: start-up remounts every mount whose Desired is
 *    "mounted". Daemon shutdown does not change it.
 *  - At most one helper process serves an upper dir (supervisor.ts).
 *  - Operations on one mount are serialised. A create reserves its name and target first: a second create of the
 *    same name or target is refused at once, and creates of other mounts never wait for it.
 *  - A target is checked (lib/mounts/targets.ts) at create and again before every mount of it, and is recorded and
 *    mounted as its real path.
 *  - A mount is nosuid,nodev unless it was created with Suid / Dev.
 *  - Nothing in this service ever touches a mount's files itself (a hung helper would block it); health is the
 *    supervisor's.
 *  - Layers are referenced (user "mount:<name>") from creation until removal, in the same batches as the record.
 *  - Attachments (volumes, binds, tmpfs: attachments.ts) are mounted once the helper's mount is live and taken down
 *    before it is unmounted; the record's volume refs are written in the same batch as the record, too.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import { LostAndFound, fsyncDir } from '../store/lost-found.js';
import type { FsckProblem } from '../layers/layer-store.js';
import type { Metastore } from '../store/metastore.js';
import type { VolumeService } from '../volumes/service.js';
import { Attachments, type Attachment, type AttachmentRequest, type AttachmentView } from './attachments.js';
import { mountAt } from './mountinfo.js';
import { MountSupervisor, mountLogger, type MountRuntime } from './supervisor.js';
import { resolveTarget, type TargetPolicy } from './targets.js';
import { checkUsableDir, resolveSources, type LayerProvider, type ResolvedSource } from './sources.js';
import { Lock } from '../util/keyed-lock.js';

export type DesiredState = 'mounted' | 'unmounted';
export type MountStatus = 'mounted' | 'unhealthy' | 'unmounted' | 'starting' | 'restarting' | 'failed';

/** The persistent record of a mount (LevelDB `mounts` sublevel, keyed by Id). */
export interface MountRecord {
  Id: string;
  Name: string;
  Created: string;
  Target: string;
  Sources: ResolvedSource[];
  /** Top layer first. */
  LowerDirs: string[];
  LayerIds: string[];
  UpperDir: string;
  WorkDir: string;
  Desired: DesiredState;
  /** setuid/setgid bits honoured (absent: no, the mount is nosuid). */
  Suid?: boolean;
  /** Device nodes usable (absent: no, the mount is nodev). */
  Dev?: boolean;
  /** Pid of the helper last started for this mount, so a restarted daemon can end one that outlived its parent. */
  HelperPid?: number;
  /** Volumes, binds and tmpfs mounts attached on top of the union (lib/mounts/attachments.ts). */
  Mounts?: Attachment[];
}

/** The API/CLI view of a mount: the record plus what is true right now (Docker's container inspect shape). */
export interface MountView {
  Id: string;
  Name: string;
  Created: string;
  Target: string;
  Sources: ResolvedSource[];
  /** Whether setuid/setgid bits and device nodes of the layers take effect (both false by default). */
  Suid: boolean;
  Dev: boolean;
  State: {
    Status: MountStatus;
    Running: boolean;
    Pid: number;
    StartedAt: string | null;
    Restarts: number;
    Error: string;
  };
  /** Options: the overlay options in effect (redirect_dir, index, ...), as the helper reports them; '' when unknown. */
  GraphDriver: { Name: string; Data: { LowerDir: string; UpperDir: string; WorkDir: string; MergedDir: string; Options: string } };
  Mounts: AttachmentView[];
}

export interface MountServiceOptions {
  rootDir: string;
  /** The helper program (fuse-overlayfs's command line). */
  mountProgram: string;
  /** How long a helper may take to make its mount live. */
  mountTimeoutMs: number;
  /** How long a helper may take to exit after its mount is gone, before it is signalled. */
  helperExitGraceMs: number;
  /** Where unrecorded mount dirs go (default: <rootDir>/lost+found). */
  lostAndFound?: LostAndFound;
  /** Named volumes for `--volume` attachments; without it only binds and tmpfs can be attached. */
  volumes?: VolumeService;
  /** The control socket (no mount may hide it). */
  socket?: string;
  /** Dirs mounts may be made under; empty for any dir the built-in rules allow. */
  allowedTargets?: string[];
  /** A helper that answers nothing for this long makes its mount `unhealthy`; also bounds each umount. */
  healthTimeoutMs?: number;
  /** How often mounts are probed (startHealthChecks). */
  healthIntervalMs?: number;
  /** Where the node journals of the mounts' FUSE connections live (default <rootDir>/run/sessions; see supervisor.ts). */
  sessionDir?: string;
}

export interface CreateMountRequest {
  name?: string;
  target: string;
  sources: string[];
  mounts?: AttachmentRequest[];
  /** Honour setuid/setgid bits and device nodes (default off). */
  suid?: boolean;
  dev?: boolean;
}

const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;
const DEFAULT_HEALTH_TIMEOUT_MS = 10_000;
const DEFAULT_HEALTH_INTERVAL_MS = 5_000;

export class MountService {
  private readonly store: Metastore;
  private readonly layers: LayerProvider;
  private readonly lostAndFound: LostAndFound;
  private readonly logger: Logger;
  private readonly options: MountServiceOptions;
  private readonly runtimes = new Map<string, MountRuntime>();
  private readonly attachments: Attachments;
  /** Ids of mounts being removed: their dir outlives their record for a moment, and fsck must leave it alone. */
  private readonly removing = new Set<string>();
  /** Ids of mounts being created: their dir exists before their record, and fsck must leave it alone. */
  private readonly creating = new Set<string>();
  /** Names and targets of creates in progress (see the create invariant). */
  private readonly reservedNames = new Set<string>();
  private readonly reservedTargets = new Set<string>();
  private readonly supervisor: MountSupervisor;

  constructor(store: Metastore, layers: LayerProvider, logger: Logger, options: MountServiceOptions) {
    this.store = store;
    this.layers = layers;
    this.logger = logger.child({ component: 'mounts' });
    this.options = options;
    this.lostAndFound = options.lostAndFound ?? new LostAndFound(options.rootDir, logger);
    this.attachments = new Attachments(options.volumes, options.rootDir, this.logger);
    this.supervisor = new MountSupervisor(store, this.attachments, this.logger, {
      mountProgram: options.mountProgram,
      mountTimeoutMs: options.mountTimeoutMs,
      helperExitGraceMs: options.helperExitGraceMs,
      healthTimeoutMs: this.healthTimeoutMs,
      healthIntervalMs: options.healthIntervalMs ?? DEFAULT_HEALTH_INTERVAL_MS,
      targetPolicy: this.targetPolicy,
      sessionDir: options.sessionDir ?? path.join(options.rootDir, 'run', 'sessions'),
    }, this.runtimes);
  }

  private get mountsDir(): string {
    return path.join(this.options.rootDir, 'mounts');
  }

  private get healthTimeoutMs(): number {
    return this.options.healthTimeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS;
  }

  private get targetPolicy(): TargetPolicy {
    return { stateDir: this.options.rootDir, socket: this.options.socket, allowedTargets: this.options.allowedTargets ?? [], timeoutMs: this.healthTimeoutMs };
  }

  private mountLogger(record: MountRecord): Logger {
    return mountLogger(this.logger, record);
  }

  // ---- public API ------------------------------------------------------------------------------------------------

  /**
   * Loads every record, moves unrecorded mount dirs to lost+found, ends helpers left behind by a killed daemon, detaches dead or stale
   * mountpoints and remounts what should be mounted. Called once, before the API serves requests.
   */
  async reconcile(): Promise<void> {
    await mkdir(this.mountsDir, { recursive: true });
    const records = (await this.store.entries<MountRecord>('mounts')).map(([, record]) => record);
    await this.sweepMountDirs(records, true);
    await this.attachments.recover(new Set(records.map((r) => r.Id)));

    await Promise.all(records.map(async (record) => {
      const runtime = this.addRuntime(record);
      const log = this.mountLogger(record);
      try {
        await checkUsableDir(record.UpperDir, 'upper dir');
        await checkUsableDir(record.WorkDir, 'work dir');
      } catch (err) {
        runtime.status = 'failed';
        runtime.error = `upper or work dir missing, not mounting: ${(err as Error).message}`;
        log.error({ err }, runtime.error);
        return;
      }
      await this.supervisor.clearLeftovers(record, log);
      if (record.Desired === 'mounted') {
        await this.enqueue(runtime, () => this.supervisor.start(runtime)).catch((err: unknown) => {
          log.error({ err }, 'could not remount at start-up');
        });
      }
    }));
  }

  async create(request: CreateMountRequest): Promise<MountView> {
    const target = await resolveTarget(request.target, this.targetPolicy);
    const id = randomBytes(32).toString('hex');
    const name = request.name ?? `mount-${id.slice(0, 8)}`;
    if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
      throw new StrataError('STRATA_BAD_OPTION', `mount name "${String(name)}" is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit`);
    }
    for (const other of this.runtimes.values()) {
      if (other.record.Name === name) throw new StrataError('STRATA_CONFLICT', `a mount named "${name}" already exists (remove it with \`strata mount rm ${name}\` or choose another --name)`);
      if (other.record.Target === target) throw new StrataError('STRATA_CONFLICT', `${target} is already the target of mount "${other.record.Name}"`);
    }
    if (this.reservedNames.has(name)) throw new StrataError('STRATA_CONFLICT', `a mount named "${name}" is being created right now`);
    if (this.reservedTargets.has(target)) throw new StrataError('STRATA_CONFLICT', `a mount at ${target} is being created right now`);
    this.reservedNames.add(name);
    this.reservedTargets.add(target);
    this.creating.add(id);
    try {
      return await this.createNow(request, id, name, target);
    } finally {
      this.reservedNames.delete(name);
      this.reservedTargets.delete(target);
      this.creating.delete(id);
    }
  }

  /** Probes every served mount every healthIntervalMs (see health.ts); stopped by shutdown(). */
  startHealthChecks(): void {
    this.supervisor.startHealthChecks();
  }

  list(): MountView[] {
    return [...this.runtimes.values()]
      .sort((a, b) => a.record.Created.localeCompare(b.record.Created))
      .map((r) => this.view(r));
  }

  inspect(reference: string): MountView {
    return this.view(this.find(reference));
  }

  async start(reference: string): Promise<MountView> {
    const runtime = this.find(reference);
    return this.enqueue(runtime, async () => {
      if (runtime.helper !== undefined && !runtime.helper.hasExited && runtime.status === 'mounted') return this.view(runtime);
      this.supervisor.cancelRestart(runtime);
      await this.setDesired(runtime, 'mounted');
      runtime.consecutiveFailures = 0;
      await this.supervisor.clearLeftovers(runtime.record, this.mountLogger(runtime.record));
      await this.supervisor.start(runtime);
      return this.view(runtime);
    });
  }

  async unmount(reference: string, options: { force: boolean }): Promise<MountView> {
    const runtime = this.find(reference);
    return this.enqueue(runtime, async () => {
      await this.supervisor.stop(runtime, { lazyIfBusy: options.force, force: options.force });
      await this.attachments.release(runtime.record);
      await this.setDesired(runtime, 'unmounted');
      return this.view(runtime);
    });
  }

  /** Unmounts and deletes a mount. With keepUpper the upper dir moves to retained/ and its path is returned. */
  async remove(reference: string, options: { force: boolean; keepUpper: boolean }): Promise<{ Id: string; Name: string; RetainedUpperDir: string | null }> {
    const runtime = this.find(reference);
    return this.enqueue(runtime, async () => {
      const { record } = runtime;
      await this.supervisor.stop(runtime, { lazyIfBusy: options.force, force: options.force });
      await this.attachments.release(record);
      // Record and references go first, in one batch; the dir after. A crash in between leaves a dir without a
      // record, which start-up moves to lost+found: a kept upper is never lost.
      // If moving a kept upper fails, it stays in mounts/<id>, which the next start moves to lost+found.
      this.removing.add(record.Id);
      let retained: string | null = null;
      try {
        await this.attachments.releaseWithRefs(record, [{ type: 'del', sublevel: 'mounts', key: record.Id }],
          (ops) => this.layers.writeWithReferences(record.LayerIds, `mount:${record.Name}`, 'del', ops));
        this.runtimes.delete(record.Id);
        if (options.keepUpper) {
          const keepDir = path.join(this.options.rootDir, 'retained', `${record.Name}-${record.Id.slice(0, 12)}`);
          await mkdir(keepDir, { recursive: true });
          retained = path.join(keepDir, 'upper');
          await rename(record.UpperDir, retained);
          await fsyncDir(keepDir);
          await fsyncDir(path.dirname(keepDir));
        }
        const trash = path.join(this.mountsDir, `.trash-${record.Id}`);
        await rename(path.join(this.mountsDir, record.Id), trash);
        await rm(trash, { recursive: true, force: true });
      } finally {
        this.removing.delete(record.Id);
      }
      this.mountLogger(record).info({ retained }, 'mount removed');
      return { Id: record.Id, Name: record.Name, RetainedUpperDir: retained };
    });
  }

  /**
   * Runs `work` on a mount's record, serialised with start/stop/rm of that mount. With `holdWrites` and a live
   * mount, the helper and its descendants are stopped (SIGSTOP) for the duration: a FUSE request being served
   * finishes its real syscall first, every later one waits in the kernel until SIGCONT, so the upper is a state
   * the writers really produced (see docs/commit-export.md). A mount being started or restarted is refused.
   */
  async withMount<T>(reference: string, holdWrites: boolean, work: (record: MountRecord, live: boolean) => Promise<T>): Promise<T> {
    const runtime = this.find(reference);
    return this.enqueue(runtime, () => this.supervisor.holdWrites(runtime, holdWrites, (live) => work(runtime.record, live)));
  }

  /**
   * Daemon shutdown: unmounts everything, detaching busy mounts lazily with a warning, and ends every helper.
   * Desired states are left as they are, so the next start remounts the same set.
   */
  async shutdown(): Promise<void> {
    await this.supervisor.shutdown();
  }

  /**
   * fsck of the mounts: dirs under mounts/ without a record (moved to lost+found with `repair`), and records whose
   * upper or work dir is gone (reported only). Creates and removes in progress are left alone (see sweepMountDirs).
   */
  async fsck(repair: boolean): Promise<FsckProblem[]> {
    return fsckMounts(this.store, this.options.rootDir, this.lostAndFound, this.logger, repair, this.busyIds);
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  /**
   * Ids whose dir must be left alone by a sweep, looked up live: a create's dir exists before its record and a
   * remove's after it, and a record written after the sweep read them has a runtime. From the moment a create makes
   * its dir until its remove deletes it, one of `creating`, `runtimes` and `removing` holds its id.
   */
  private readonly busyIds: IdSet = { has: (id) => this.creating.has(id) || this.removing.has(id) || this.runtimes.has(id) };

  private async sweepMountDirs(records: readonly MountRecord[], act: boolean): Promise<FsckProblem[]> {
    return sweepMountDirs(this.mountsDir, records, act, this.busyIds, this.lostAndFound, this.logger);
  }

  /** Creates a mount whose name and resolved target the caller has checked and reserved. */
  private async createNow(request: CreateMountRequest, id: string, name: string, resolvedTarget: string): Promise<MountView> {
    if ((await mountAt(resolvedTarget)) !== undefined) {
      throw new StrataError('STRATA_MOUNT_BUSY', `something is already mounted at ${resolvedTarget}; unmount it first`);
    }
    const sources = await resolveSources(request.sources, this.layers);
    const attachments = await this.attachments.prepare(request.mounts, resolvedTarget);

    const staging = path.join(this.mountsDir, `.staging-${id}`);
    const finalDir = path.join(this.mountsDir, id);
    try {
      await mkdir(path.join(staging, 'upper'), { recursive: true });
      await mkdir(path.join(staging, 'work'), { recursive: true });
      await fsyncDir(staging);
      await rename(staging, finalDir);
      await fsyncDir(this.mountsDir);
    } catch (err) {
      await rm(staging, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    const record: MountRecord = {
      Id: id,
      Name: name,
      Created: new Date().toISOString(),
      Target: resolvedTarget,
      Sources: sources,
      LowerDirs: sources.flatMap((s) => s.lowerDirs),
      LayerIds: sources.flatMap((s) => s.layerIds),
      UpperDir: path.join(finalDir, 'upper'),
      WorkDir: path.join(finalDir, 'work'),
      Desired: 'mounted',
      ...(attachments.length === 0 ? {} : { Mounts: attachments }),
      Suid: request.suid === true,
      Dev: request.dev === true,
    };
    const user = `mount:${name}`;
    try {
      await this.attachments.commitWithRefs(record, [{ type: 'put', sublevel: 'mounts', key: id, value: record }],
        (ops) => this.layers.writeWithReferences(record.LayerIds, user, 'put', ops));
    } catch (err) {
      // Nothing recorded, nothing mounted: the new dir holds no data.
      await rm(finalDir, { recursive: true, force: true });
      throw err;
    }
    const runtime = this.addRuntime(record);
    try {
      await this.enqueue(runtime, () => this.supervisor.start(runtime));
    } catch (err) {
      // Nothing was written into the new upper yet, so rolling the whole creation back loses nothing. If the
      // store cannot take the rollback, the record stays (a failed mount the user can see and remove).
      await this.attachments.release(record).catch((releaseErr: unknown) => this.mountLogger(record).error({ err: releaseErr }, 'could not remove the tmpfs mounts of the failed create'));
      try {
        await this.attachments.releaseWithRefs(record, [{ type: 'del', sublevel: 'mounts', key: id }],
          (ops) => this.layers.writeWithReferences(record.LayerIds, user, 'del', ops));
      } catch (rollbackErr) {
        this.mountLogger(record).error({ err: rollbackErr }, 'could not roll back the failed create; the mount stays, failed');
        throw err;
      }
      this.runtimes.delete(id);
      await rm(finalDir, { recursive: true, force: true });
      throw err;
    }
    this.mountLogger(record).info({ target: resolvedTarget, lowerDirs: record.LowerDirs }, 'mount created');
    return this.view(runtime);
  }

  private addRuntime(record: MountRecord): MountRuntime {
    const runtime: MountRuntime = { record, status: 'unmounted', restarts: 0, consecutiveFailures: 0, error: '', lock: new Lock() };
    this.runtimes.set(record.Id, runtime);
    return runtime;
  }

  private enqueue<T>(runtime: MountRuntime, operation: () => Promise<T>): Promise<T> {
    return runtime.lock.run(operation);
  }

  private find(reference: string): MountRuntime {
    if (typeof reference !== 'string' || reference === '') throw new StrataError('STRATA_BAD_REQUEST', 'name a mount');
    const exact = this.runtimes.get(reference) ?? [...this.runtimes.values()].find((r) => r.record.Name === reference);
    if (exact !== undefined) return exact;
    const byPrefix = [...this.runtimes.values()].filter((r) => r.record.Id.startsWith(reference));
    if (byPrefix.length === 1 && byPrefix[0] !== undefined) return byPrefix[0];
    if (byPrefix.length > 1) throw new StrataError('STRATA_BAD_REQUEST', `"${reference}" matches ${byPrefix.length} mount ids; give more characters or the name`);
    throw new StrataError('STRATA_NOT_FOUND', `no mount named "${reference}" (see \`strata mount ls\`)`);
  }

  private async setDesired(runtime: MountRuntime, desired: DesiredState): Promise<void> {
    if (runtime.record.Desired === desired) return;
    const record = { ...runtime.record, Desired: desired };
    await this.store.put('mounts', record.Id, record);
    runtime.record = record;
  }

  private view(runtime: MountRuntime): MountView {
    const { record } = runtime;
    return {
      Id: record.Id,
      Name: record.Name,
      Created: record.Created,
      Target: record.Target,
      Sources: record.Sources,
      Suid: record.Suid === true,
      Dev: record.Dev === true,
      State: {
        Status: runtime.status,
        Running: runtime.status === 'mounted' || runtime.status === 'unhealthy',
        Pid: runtime.helper?.pid ?? 0,
        StartedAt: runtime.status === 'mounted' ? runtime.startedAt ?? null : null,
        Restarts: runtime.restarts,
        Error: runtime.error,
      },
      GraphDriver: {
        Name: 'strata-overlay',
        Data: {
          LowerDir: record.LowerDirs.join(':'), UpperDir: record.UpperDir, WorkDir: record.WorkDir, MergedDir: record.Target,
          Options: runtime.helper?.overlayOptions ?? '',
        },
      },
      Mounts: this.attachments.view(record),
    };
  }
}

/**
 * The mount part of fsck on the records as stored: the daemon calls it through MountService.fsck;
 * `strata fsck` calls it directly on a state dir no daemon serves. `busy` names mounts whose dir may briefly outlive
 * their record (being removed).
 */
/** Ids a sweep must leave alone (a Set, or a live view). */
export interface IdSet {
  has(id: string): boolean;
}

export async function fsckMounts(store: Metastore, rootDir: string, lostAndFound: LostAndFound, logger: Logger, repair: boolean, busy: IdSet = new Set()): Promise<FsckProblem[]> {
  const records = (await store.entries<MountRecord>('mounts')).map(([, record]) => record);
  await mkdir(path.join(rootDir, 'mounts'), { recursive: true });
  const problems = await sweepMountDirs(path.join(rootDir, 'mounts'), records, repair, busy, lostAndFound, logger);
  for (const record of records) {
    for (const [what, dir] of [['upper', record.UpperDir], ['work', record.WorkDir]] as const) {
      try {
        await checkUsableDir(dir, `${what} dir`);
      } catch (err) {
        problems.push({ subject: `mount ${record.Name}`, problem: (err as Error).message, repair: null, repaired: false });
      }
    }
  }
  return problems;
}

/** Deletes .staging-/.trash- dirs and moves (with `act`) mount dirs without a record to lost+found. */
async function sweepMountDirs(mountsDir: string, records: readonly MountRecord[], act: boolean, busy: IdSet, lostAndFound: LostAndFound, logger: Logger): Promise<FsckProblem[]> {
  const known = new Set(records.map((r) => r.Id));
  const problems: FsckProblem[] = [];
  for (const entry of (await readdir(mountsDir)).sort()) {
    const dir = path.join(mountsDir, entry);
    // The staging dir of a create in progress, the trash dir of a remove in progress.
    if (busy.has(entry.replace(/^\.(staging|trash)-/, ''))) continue;
    if (entry.startsWith('.staging-') || entry.startsWith('.trash-')) {
      problems.push({ subject: dir, problem: 'an interrupted mount create or remove left it', repair: 'delete it (it holds no user data)', repaired: act });
      if (act) {
        logger.warn({ dir }, 'deleting the dir of an interrupted mount create or remove');
        await rm(dir, { recursive: true, force: true });
      }
    } else if (!known.has(entry) && !busy.has(entry)) {
      problems.push({ subject: dir, problem: 'no mount record names this dir', repair: 'move it to lost+found', repaired: act });
      if (act) await lostAndFound.quarantine(dir, 'mount', entry.slice(0, 12), 'no mount record names this dir');
    }
  }
  return problems;
}
