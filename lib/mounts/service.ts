/**
 * The mount service: creates, starts, stops and removes union mounts, one supervised helper process per mount.
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
 *  - At most one helper process serves an upper dir: before a helper starts, anything left mounted at the target is
 *    detached and a helper left by a previous daemon is ended.
 *  - Operations on one mount are serialised. A create reserves its name and target first: a second create of the
 *    same name or target is refused at once, and creates of other mounts never wait for it.
 *  - A target is checked (lib/mounts/targets.ts) at create and again before every mount of it, and is recorded and
 *    mounted as its real path.
 *  - A mount is nosuid,nodev unless it was created with Suid / Dev.
 *  - Health: a helper whose mount answers nothing for healthTimeoutMs is reported `unhealthy`; nothing in this
 *    service ever touches a mount's files itself (a hung helper would block it), see mountinfo.ts and health.ts.
 *  - Layers are referenced (user "mount:<name>") from creation until removal, in the same batches as the record.
 *  - Attachments (volumes, binds, tmpfs: attachments.ts) are mounted once the helper's mount is live and taken down
 *    before it is unmounted; the record's volume refs are written in the same batch as the record, too.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import { LostAndFound, fsyncDir } from '../store/lost-found.js';
import type { FsckProblem } from '../layers/layer-store.js';
import type { Metastore } from '../store/metastore.js';
import type { VolumeService } from '../volumes/service.js';
import { Attachments, type Attachment, type AttachmentRequest, type AttachmentView } from './attachments.js';
import { describeExit, HelperProcess, type HelperExit } from './helper.js';
import { describeProcessState, probeMount } from './health.js';
import { detachMount, forceDetach, mountAt } from './mountinfo.js';
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

interface MountRuntime {
  record: MountRecord;
  status: MountStatus;
  helper?: HelperProcess;
  startedAt?: string;
  restarts: number;
  consecutiveFailures: number;
  error: string;
  /** The helper being stopped on purpose: its exit is expected and must not trigger a restart. */
  stoppingHelper?: HelperProcess;
  restartTimer?: NodeJS.Timeout;
  /** Operations on this mount run one at a time. */
  lock: Lock;
  /** A health probe is outstanding (never two at once: a stuck one holds a child process). */
  probing?: boolean;
}

const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;
const MAX_CONSECUTIVE_FAILURES = 5;
const MAX_BACKOFF_MS = 30_000;
const HEALTHY_RUN_MS = 60_000;
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
  private healthTimer: NodeJS.Timeout | undefined;
  private shuttingDown = false;

  constructor(store: Metastore, layers: LayerProvider, logger: Logger, options: MountServiceOptions) {
    this.store = store;
    this.layers = layers;
    this.logger = logger.child({ component: 'mounts' });
    this.options = options;
    this.lostAndFound = options.lostAndFound ?? new LostAndFound(options.rootDir, logger);
    this.attachments = new Attachments(options.volumes, options.rootDir, this.logger);
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
    return this.logger.child({ mount: record.Name, mountId: record.Id.slice(0, 12) });
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
      await this.clearLeftovers(record, log);
      if (record.Desired === 'mounted') {
        await this.enqueue(runtime, () => this.startHelper(runtime)).catch((err: unknown) => {
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
    if (this.healthTimer !== undefined) return;
    this.healthTimer = setInterval(() => {
      for (const runtime of this.runtimes.values()) void this.checkHealth(runtime);
    }, this.options.healthIntervalMs ?? DEFAULT_HEALTH_INTERVAL_MS);
    this.healthTimer.unref();
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
      this.cancelRestart(runtime);
      await this.setDesired(runtime, 'mounted');
      runtime.consecutiveFailures = 0;
      await this.clearLeftovers(runtime.record, this.mountLogger(runtime.record));
      await this.startHelper(runtime);
      return this.view(runtime);
    });
  }

  async unmount(reference: string, options: { force: boolean }): Promise<MountView> {
    const runtime = this.find(reference);
    return this.enqueue(runtime, async () => {
      await this.stopHelper(runtime, { lazyIfBusy: options.force, force: options.force });
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
      await this.stopHelper(runtime, { lazyIfBusy: options.force, force: options.force });
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
    return this.enqueue(runtime, async () => {
      if (runtime.status === 'starting' || runtime.status === 'restarting') {
        throw new StrataError('STRATA_MOUNT_BUSY', `mount "${runtime.record.Name}" is ${runtime.status}; try again once it is mounted`);
      }
      const pid = runtime.status === 'mounted' && runtime.helper !== undefined && !runtime.helper.hasExited ? runtime.helper.pid : undefined;
      if (!holdWrites || pid === undefined) return work(runtime.record, pid !== undefined);
      const pids = [pid, ...(await descendantsOf(pid))];
      for (const p of pids) signalQuietly(p, 'SIGSTOP');
      try {
        return await work(runtime.record, true);
      } finally {
        for (const p of pids) signalQuietly(p, 'SIGCONT');
      }
    });
  }

  /**
   * Daemon shutdown: unmounts everything, detaching busy mounts lazily with a warning, and ends every helper.
   * Desired states are left as they are, so the next start remounts the same set.
   */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    if (this.healthTimer !== undefined) clearInterval(this.healthTimer);
    this.healthTimer = undefined;
    await Promise.all([...this.runtimes.values()].map(async (runtime) => {
      this.cancelRestart(runtime);
      try {
        await runtime.lock.idle();
        await this.stopHelper(runtime, { lazyIfBusy: true, force: runtime.status === 'unhealthy' });
      } catch (err) {
        this.mountLogger(runtime.record).error({ err }, 'could not unmount cleanly at shutdown');
      }
    }));
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
      await this.enqueue(runtime, () => this.startHelper(runtime));
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

  /** Ends a helper left by a previous daemon and detaches whatever is still mounted at the target. */
  private async clearLeftovers(record: MountRecord, log: Logger): Promise<void> {
    const stale = await mountAt(record.Target);
    if (stale !== undefined) {
      const outcome = await detachMount(record.Target, { lazyIfBusy: true, timeoutMs: this.healthTimeoutMs })
        .catch(() => forceDetach(record.Target, this.healthTimeoutMs));
      if (outcome !== 'unmounted') log.warn({ target: record.Target }, 'a leftover mount was busy or dead and was detached lazily');
      else log.info({ target: record.Target, outcome }, 'detached a leftover mount');
    }
    if (record.HelperPid !== undefined && (await isLeftoverHelper(record.HelperPid, record.Target))) {
      log.warn({ helperPid: record.HelperPid }, 'ending the mount helper a previous daemon left running');
      process.kill(record.HelperPid, 'SIGTERM');
      for (let i = 0; i < 40 && (await isLeftoverHelper(record.HelperPid, record.Target)); i++) await sleep(50);
      if (await isLeftoverHelper(record.HelperPid, record.Target)) process.kill(record.HelperPid, 'SIGKILL');
    }
  }

  /** The target may have changed since it was checked (replaced by a symlink while the daemon was stopped...). */
  private async checkTarget(record: MountRecord): Promise<void> {
    const real = await resolveTarget(record.Target, this.targetPolicy);
    if (real !== record.Target) {
      throw new StrataError('STRATA_BAD_DIR', `target ${record.Target} now resolves to ${real} (a directory on its path was replaced by a symlink?); not mounting there`);
    }
  }

  private async startHelper(runtime: MountRuntime): Promise<void> {
    const { record } = runtime;
    const log = this.mountLogger(record);
    const helper = new HelperProcess({
      program: this.options.mountProgram,
      target: record.Target,
      lowerDirs: record.LowerDirs,
      upperDir: record.UpperDir,
      workDir: record.WorkDir,
      suid: record.Suid === true,
      dev: record.Dev === true,
      unmountTimeoutMs: this.healthTimeoutMs,
    }, log);
    runtime.status = 'starting';
    try {
      await this.checkTarget(record);
      runtime.helper = helper;
      await helper.start(this.options.mountTimeoutMs);
    } catch (err) {
      runtime.status = 'failed';
      runtime.error = (err as Error).message;
      runtime.helper = undefined;
      throw err;
    }
    try {
      await this.attachments.attach(record, log, { fresh: record.HelperPid === undefined });
    } catch (err) {
      runtime.status = 'failed';
      runtime.error = (err as Error).message;
      runtime.helper = undefined;
      runtime.stoppingHelper = helper;
      await detachMount(record.Target, { lazyIfBusy: true, timeoutMs: this.healthTimeoutMs }).catch(() => forceDetach(record.Target, this.healthTimeoutMs)).catch(() => undefined);
      if (!(await helper.exitsWithin(this.options.helperExitGraceMs))) helper.kill('SIGKILL');
      throw err;
    }
    runtime.status = 'mounted';
    runtime.error = '';
    runtime.startedAt = new Date().toISOString();
    runtime.record = { ...runtime.record, HelperPid: helper.pid };
    // The pid only lets a later daemon end a helper this one leaves behind; a store that cannot write must not
    // turn a live mount into a failed create.
    await this.store.put('mounts', record.Id, runtime.record).catch((err: unknown) => {
      log.warn({ err }, 'could not record the helper pid');
    });
    log.info({ helperPid: helper.pid, target: record.Target }, 'mounted');
    void helper.waitForExit().then((exit) => this.onHelperExit(runtime, helper, exit));
  }

  /**
   * Stops the helper through an unmount, so that the kernel, not a signal, tells it to finish.
   * With `force`, a mount that is unhealthy, busy or does not unmount in time has its FUSE connection aborted and is
   * detached (forceDetach), and a helper that does not exit is killed: every step is bounded.
   */
  private async stopHelper(runtime: MountRuntime, options: { lazyIfBusy: boolean; force: boolean }): Promise<void> {
    this.cancelRestart(runtime);
    const helper = runtime.helper;
    const log = this.mountLogger(runtime.record);
    const target = runtime.record.Target;
    const timeoutMs = this.healthTimeoutMs;
    runtime.stoppingHelper = helper;
    let outcome;
    try {
      // Nothing may look up paths inside a hung mount (its attachments' mountpoints included): a forced stop of a
      // mount that is, or now proves, unresponsive aborts the connection first, and the lazy detach takes the
      // attachments with it.
      if (options.force && (runtime.status === 'unhealthy' || (await probeMount(target, timeoutMs).result).state === 'hung')) {
        outcome = await forceDetach(target, timeoutMs);
        this.attachments.forget(runtime.record);
      } else {
        const detachUnion = options.force
          ? () => detachMount(target, { lazyIfBusy: false, timeoutMs }).catch((err: unknown) => {
            log.warn({ err, target }, 'plain unmount failed; aborting the FUSE connection');
            return forceDetach(target, timeoutMs);
          })
          : () => detachMount(target, { lazyIfBusy: options.lazyIfBusy, timeoutMs });
        outcome = await this.attachments.unmountAll(runtime.record, log, { lazyIfBusy: options.lazyIfBusy }, detachUnion);
      }
    } catch (err) {
      runtime.stoppingHelper = undefined;
      // The helper may have died while we tried; hand that exit to supervision, which skipped it.
      if (helper !== undefined && helper.hasExited) void helper.waitForExit().then((exit) => this.onHelperExit(runtime, helper, exit));
      throw err;
    }
    if (outcome === 'lazily-detached') {
      log.warn({ target }, 'mount was busy and has been detached lazily; processes still inside it lose access when its helper ends');
    } else if (outcome === 'aborted-and-detached') {
      log.warn({ target }, 'the FUSE connection was aborted and the mount detached; requests in flight failed with ECONNABORTED');
    }
    runtime.helper = undefined;
    runtime.status = 'unmounted';
    runtime.error = '';
    if (helper !== undefined && !(await helper.exitsWithin(this.options.helperExitGraceMs))) {
      // A stopped or hung helper never acts on SIGTERM: a forced stop goes straight to SIGKILL.
      if (!options.force) {
        log.warn({ helperPid: helper.pid }, 'mount helper still running after unmount; sending SIGTERM');
        helper.kill('SIGTERM');
      }
      if (options.force || !(await helper.exitsWithin(this.options.helperExitGraceMs))) {
        log.warn({ helperPid: helper.pid }, 'mount helper still running after unmount; sending SIGKILL');
        helper.kill('SIGKILL');
      }
      if (!(await helper.exitsWithin(timeoutMs))) log.error({ helperPid: helper.pid }, 'mount helper survived SIGKILL (stuck in the kernel?)');
    }
    if (helper !== undefined) log.info({ target: runtime.record.Target, outcome }, 'unmounted');
  }

  /** Supervision: a helper that ends while it should be serving is restarted with exponential back-off. */
  private async onHelperExit(runtime: MountRuntime, helper: HelperProcess, exit: HelperExit): Promise<void> {
    if (runtime.helper !== helper || runtime.stoppingHelper === helper || this.shuttingDown || !this.runtimes.has(runtime.record.Id)) return;
    const log = this.mountLogger(runtime.record);
    runtime.helper = undefined;
    const ranFor = Date.now() - Date.parse(runtime.startedAt ?? new Date().toISOString());
    runtime.consecutiveFailures = ranFor > HEALTHY_RUN_MS ? 1 : runtime.consecutiveFailures + 1;
    runtime.error = `mount helper ended unexpectedly (${describeExit(exit)}): ${helper.lastStderr() || 'no output'}`;
    log.error({ exit, helperPid: helper.pid }, 'mount helper ended unexpectedly');
    this.attachments.forget(runtime.record);
    try {
      await detachMount(runtime.record.Target, { lazyIfBusy: true, timeoutMs: this.healthTimeoutMs });
    } catch (err) {
      log.error({ err }, 'could not detach the dead mount');
    }
    this.scheduleRestart(runtime, log);
  }

  private scheduleRestart(runtime: MountRuntime, log: Logger): void {
    if (runtime.consecutiveFailures > MAX_CONSECUTIVE_FAILURES) {
      runtime.status = 'failed';
      log.error({ failures: runtime.consecutiveFailures }, 'giving up restarting; run `strata mount start` after fixing the cause');
      return;
    }
    runtime.status = 'restarting';
    const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** (runtime.consecutiveFailures - 1));
    runtime.restartTimer = setTimeout(() => {
      runtime.restartTimer = undefined;
      void this.enqueue(runtime, async () => {
        if (this.shuttingDown || runtime.status !== 'restarting') return;
        runtime.restarts += 1;
        try {
          await this.startHelper(runtime);
        } catch (err) {
          runtime.consecutiveFailures += 1;
          log.error({ err }, 'restart failed');
          this.scheduleRestart(runtime, log);
        }
      });
    }, delay);
  }

  /** One health probe of a served mount (see health.ts); flips it between `mounted` and `unhealthy`. */
  private async checkHealth(runtime: MountRuntime): Promise<void> {
    const helper = runtime.helper;
    if (runtime.probing || helper === undefined || helper.hasExited || (runtime.status !== 'mounted' && runtime.status !== 'unhealthy')) return;
    runtime.probing = true;
    const probe = probeMount(runtime.record.Target, this.healthTimeoutMs);
    // A probe stuck on a hung connection holds its child until the connection is aborted: never start a second one.
    void probe.ended.then(() => { runtime.probing = false; });
    const result = await probe.result;
    // The mount may have been stopped or restarted while the probe ran: its result is about the old helper.
    if (runtime.helper !== helper || (runtime.status !== 'mounted' && runtime.status !== 'unhealthy')) return;
    const log = this.mountLogger(runtime.record);
    if (result.state === 'hung') {
      if (runtime.status !== 'unhealthy') {
        runtime.status = 'unhealthy';
        runtime.error = `the mount answers nothing: ${result.detail}; ${await describeProcessState(helper.pid)}. \`strata mount unmount --force ${runtime.record.Name}\` aborts its FUSE connection`;
        log.error({ helperPid: helper.pid, detail: result.detail }, 'mount helper is not answering; mount marked unhealthy');
      }
    } else if (result.state === 'ok' && runtime.status === 'unhealthy') {
      runtime.status = 'mounted';
      runtime.error = '';
      log.warn({ helperPid: helper.pid }, 'mount helper answers again; mount healthy');
    }
  }

  private cancelRestart(runtime: MountRuntime): void {
    if (runtime.restartTimer !== undefined) clearTimeout(runtime.restartTimer);
    runtime.restartTimer = undefined;
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

/** True if `pid` is alive and is a helper serving `target` (guards against pid reuse). */
async function isLeftoverHelper(pid: number, target: string): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return false;
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    return argv.includes(target) && argv.some((arg) => arg.includes('lowerdir='));
  } catch {
    return false;
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

/** Every process below `pid` (children per /proc/<pid>/task/<tid>/children). */
async function descendantsOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const next = queue.shift()!;
    let tasks: string[] = [];
    try {
      tasks = await readdir(`/proc/${next}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      const children = await readFile(`/proc/${next}/task/${tid}/children`, 'utf8').catch(() => '');
      for (const child of children.split(' ').filter(Boolean).map(Number)) {
        if (!out.includes(child)) { out.push(child); queue.push(child); }
      }
    }
  }
  return out;
}

function signalQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Gone already: nothing left to stop or continue.
  }
}
