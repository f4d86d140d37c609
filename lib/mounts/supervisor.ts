/**
 * Helper supervision: one strata-overlay process per served mount. Starting a helper and waiting for its mount,
 * restarting one that ends on its own (exponential back-off), health probes, stopping through an unmount (with a
 * bounded forced path), holding a helper's writes, and ending helpers a previous daemon left behind.
 *
 * The mount service (service.ts) owns the records and the runtimes map; it calls in here under the runtime's lock.
 * Invariants:
 *  - At most one helper process serves an upper dir: before a helper starts, anything left mounted at the target is
 *    detached and a helper left by a previous daemon is ended (clearLeftovers).
 *  - A helper stopped on purpose is `stoppingHelper` before its unmount begins, so its exit is never taken for a
 *    crash; only the runtime's current helper, of a runtime still in the map, is ever restarted.
 *  - Restarts run under the runtime's lock like every other operation on the mount, and stop after
 *    MAX_CONSECUTIVE_FAILURES (a run longer than HEALTHY_RUN_MS resets the count).
 *  - Health: a helper whose mount answers nothing for healthTimeoutMs is reported `unhealthy`; nothing here ever
 *    touches a mount's files itself (a hung helper would block it), see mountinfo.ts and health.ts. At most one
 *    probe per mount is outstanding.
 */
import { closeSync, openSync } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metastore } from '../store/metastore.js';
import type { Lock } from '../util/keyed-lock.js';
import type { Attachments } from './attachments.js';
import { describeExit, HelperProcess, type HelperExit } from './helper.js';
import { describeProcessState, probeMount } from './health.js';
import { detachMount, forceDetach, mountAt } from './mountinfo.js';
import type { MountRecord, MountStatus } from './service.js';
import { resolveTarget, type TargetPolicy } from './targets.js';

/** What is true of a mount right now, beside its record: its helper and the supervision state. */
export interface MountRuntime {
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
  /**
   * The mount's FUSE connection, held by the daemon while the mount lives (helpers that can take it over only):
   * our duplicate of the /dev/fuse fd keeps the mount alive when its helper dies, and a new helper resumes it.
   */
  connection?: HeldConnection;
}

interface HeldConnection {
  deviceFd: number;
  journalPath: string;
  /** The mount the connection serves (its mountinfo id), to tell it from a mount made later at the target. */
  mountId: number | undefined;
}

export interface SupervisorOptions {
  /** The helper program (fuse-overlayfs's command line). */
  mountProgram: string;
  /** How long a helper may take to make its mount live. */
  mountTimeoutMs: number;
  /** How long a helper may take to exit after its mount is gone, before it is signalled. */
  helperExitGraceMs: number;
  /** A helper that answers nothing for this long makes its mount `unhealthy`; also bounds each umount. */
  healthTimeoutMs: number;
  /** How often mounts are probed (startHealthChecks). */
  healthIntervalMs: number;
  targetPolicy: TargetPolicy;
  /** Where the node journals of held connections live (a tmpfs is best: they are rewritten constantly). */
  sessionDir: string;
}

const MAX_CONSECUTIVE_FAILURES = 5;
const MAX_BACKOFF_MS = 30_000;
const HEALTHY_RUN_MS = 60_000;

/** The child logger every message about one mount goes through. */
export function mountLogger(logger: Logger, record: MountRecord): Logger {
  return logger.child({ mount: record.Name, mountId: record.Id.slice(0, 12) });
}

export class MountSupervisor {
  private readonly store: Metastore;
  private readonly attachments: Attachments;
  private readonly logger: Logger;
  private readonly options: SupervisorOptions;
  /** The service's runtimes, read only: a runtime no longer in it (removed) is never restarted. */
  private readonly runtimes: ReadonlyMap<string, MountRuntime>;
  private healthTimer: NodeJS.Timeout | undefined;
  private shuttingDown = false;

  constructor(store: Metastore, attachments: Attachments, logger: Logger, options: SupervisorOptions, runtimes: ReadonlyMap<string, MountRuntime>) {
    this.store = store;
    this.attachments = attachments;
    this.logger = logger;
    this.options = options;
    this.runtimes = runtimes;
  }

  /** Probes every served mount every healthIntervalMs (see health.ts); stopped by shutdown(). */
  startHealthChecks(): void {
    if (this.healthTimer !== undefined) return;
    this.healthTimer = setInterval(() => {
      for (const runtime of this.runtimes.values()) void this.checkHealth(runtime);
    }, this.options.healthIntervalMs);
    this.healthTimer.unref();
  }

  /**
   * Daemon shutdown: no more restarts or probes; unmounts everything, detaching busy mounts lazily, and ends every
   * helper. Each stop waits for the operation in progress on its mount.
   */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    if (this.healthTimer !== undefined) clearInterval(this.healthTimer);
    this.healthTimer = undefined;
    await Promise.all([...this.runtimes.values()].map(async (runtime) => {
      this.cancelRestart(runtime);
      try {
        await runtime.lock.idle();
        await this.stop(runtime, { lazyIfBusy: true, force: runtime.status === 'unhealthy' });
      } catch (err) {
        mountLogger(this.logger, runtime.record).error({ err }, 'could not unmount cleanly at shutdown');
      }
    }));
  }

  /** Ends a helper left by a previous daemon and detaches whatever is still mounted at the target. */
  async clearLeftovers(record: MountRecord, log: Logger): Promise<void> {
    const timeoutMs = this.options.healthTimeoutMs;
    const stale = await mountAt(record.Target);
    if (stale !== undefined) {
      const outcome = await detachMount(record.Target, { lazyIfBusy: true, timeoutMs })
        .catch(() => forceDetach(record.Target, timeoutMs));
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

  /**
   * Starts a helper and waits for its mount, then mounts the attachments and records the helper's pid. Called under
   * the runtime's lock. On failure the runtime is `failed` with the error, and nothing is left mounted.
   */
  async start(runtime: MountRuntime): Promise<void> {
    const { record } = runtime;
    const log = mountLogger(this.logger, record);
    this.releaseConnection(runtime);
    const connection = this.canHandOver() ? await this.openConnection(record) : undefined;
    const helper = new HelperProcess({
      program: this.options.mountProgram,
      target: record.Target,
      lowerDirs: record.LowerDirs,
      upperDir: record.UpperDir,
      workDir: record.WorkDir,
      suid: record.Suid === true,
      dev: record.Dev === true,
      unmountTimeoutMs: this.options.healthTimeoutMs,
      connection,
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
      if (connection !== undefined) closeConnection(connection);
      throw err;
    }
    if (connection !== undefined) {
      connection.mountId = (await mountAt(record.Target))?.mountId;
      runtime.connection = connection;
    }
    try {
      await this.attachments.attach(record, log, { fresh: record.HelperPid === undefined });
    } catch (err) {
      runtime.status = 'failed';
      runtime.error = (err as Error).message;
      runtime.helper = undefined;
      runtime.stoppingHelper = helper;
      await detachMount(record.Target, { lazyIfBusy: true, timeoutMs: this.options.healthTimeoutMs }).catch(() => forceDetach(record.Target, this.options.healthTimeoutMs)).catch(() => undefined);
      if (!(await helper.exitsWithin(this.options.helperExitGraceMs))) helper.kill('SIGKILL');
      throw err;
    }
    await this.serving(runtime, helper, log);
    log.info({ helperPid: helper.pid, target: record.Target }, 'mounted');
  }

  /** `helper` now serves the mount: it is recorded and supervised. */
  private async serving(runtime: MountRuntime, helper: HelperProcess, log: Logger): Promise<void> {
    runtime.status = 'mounted';
    runtime.error = '';
    runtime.startedAt = new Date().toISOString();
    runtime.record = { ...runtime.record, HelperPid: helper.pid };
    // The pid only lets a later daemon end a helper this one leaves behind; a store that cannot write must not
    // turn a live mount into a failed create.
    await this.store.put('mounts', runtime.record.Id, runtime.record).catch((err: unknown) => {
      log.warn({ err }, 'could not record the helper pid');
    });
    void helper.waitForExit().then((exit) => this.onHelperExit(runtime, helper, exit));
  }

  /**
   * Stops the helper through an unmount, so that the kernel, not a signal, tells it to finish.
   * With `force`, a mount that is unhealthy, busy or does not unmount in time has its FUSE connection aborted and is
   * detached (forceDetach), and a helper that does not exit is killed: every step is bounded.
   */
  async stop(runtime: MountRuntime, options: { lazyIfBusy: boolean; force: boolean }): Promise<void> {
    this.cancelRestart(runtime);
    const helper = runtime.helper;
    const log = mountLogger(this.logger, runtime.record);
    const target = runtime.record.Target;
    const timeoutMs = this.options.healthTimeoutMs;
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
    this.releaseConnection(runtime);
    if (helper !== undefined) log.info({ target: runtime.record.Target, outcome }, 'unmounted');
  }

  /** Whether the helper program can take over a live connection (strata-overlay can; fuse-overlayfs cannot). */
  private canHandOver(): boolean {
    return path.basename(this.options.mountProgram).startsWith('strata-overlay');
  }

  private async openConnection(record: MountRecord): Promise<HeldConnection> {
    await mkdir(this.options.sessionDir, { recursive: true, mode: 0o700 });
    const journalPath = path.join(this.options.sessionDir, `${record.Id}.nodes`);
    // A journal left by an earlier daemon describes a connection nobody holds any more.
    await rm(journalPath, { force: true });
    try {
      return { deviceFd: openSync('/dev/fuse', 'r+'), journalPath, mountId: undefined };
    } catch (err) {
      throw new StrataError('STRATA_MOUNT_FAILED', `cannot open /dev/fuse for mount "${record.Name}": ${(err as Error).message}`, { cause: err });
    }
  }

  /** Closes our copy of the connection (the mount is gone, or is being replaced by a fresh one). */
  private releaseConnection(runtime: MountRuntime): void {
    if (runtime.connection === undefined) return;
    closeConnection(runtime.connection);
    runtime.connection = undefined;
  }

  /**
   * The mount whose helper just died is still there, on the connection we hold: a new helper takes it over and
   * the processes using the mount only wait. Returns false when that is not possible (then the mount is
   * detached and started afresh).
   */
  private async resume(runtime: MountRuntime, exited: HelperProcess, log: Logger): Promise<boolean> {
    const connection = runtime.connection;
    if (connection === undefined) return false;
    const now = await mountAt(runtime.record.Target);
    if (now === undefined || now.mountId !== connection.mountId) return false;
    const helper = new HelperProcess({ ...exited.spec, connection }, log);
    runtime.status = 'restarting';
    runtime.helper = helper;
    runtime.restarts += 1;
    try {
      await helper.start(this.options.mountTimeoutMs, { resume: true });
    } catch (err) {
      log.error({ err }, 'a new helper could not take over the mount; starting it afresh');
      runtime.helper = undefined;
      helper.kill('SIGKILL');
      return false;
    }
    await this.serving(runtime, helper, log);
    log.warn({ helperPid: helper.pid, restarts: runtime.restarts }, 'a new mount helper took over the live mount');
    return true;
  }

  /**
   * Runs `work` with the helper of a live mount and its descendants stopped (SIGSTOP): a FUSE request being served
   * finishes its real syscall first, every later one waits in the kernel until SIGCONT, so the upper is a state the
   * writers really produced (see docs/commit-export.md). Without a live helper `work` just runs. Called under the
   * runtime's lock.
   */
  async holdWrites<T>(runtime: MountRuntime, holdWrites: boolean, work: (live: boolean) => Promise<T>): Promise<T> {
    if (runtime.status === 'starting' || runtime.status === 'restarting') {
      throw new StrataError('STRATA_MOUNT_BUSY', `mount "${runtime.record.Name}" is ${runtime.status}; try again once it is mounted`);
    }
    const pid = runtime.status === 'mounted' && runtime.helper !== undefined && !runtime.helper.hasExited ? runtime.helper.pid : undefined;
    if (!holdWrites || pid === undefined) return work(pid !== undefined);
    const pids = [pid, ...(await descendantsOf(pid))];
    for (const p of pids) signalQuietly(p, 'SIGSTOP');
    try {
      return await work(true);
    } finally {
      for (const p of pids) signalQuietly(p, 'SIGCONT');
    }
  }

  cancelRestart(runtime: MountRuntime): void {
    if (runtime.restartTimer !== undefined) clearTimeout(runtime.restartTimer);
    runtime.restartTimer = undefined;
  }

  /** The target may have changed since it was checked (replaced by a symlink while the daemon was stopped...). */
  private async checkTarget(record: MountRecord): Promise<void> {
    const real = await resolveTarget(record.Target, this.options.targetPolicy);
    if (real !== record.Target) {
      throw new StrataError('STRATA_BAD_DIR', `target ${record.Target} now resolves to ${real} (a directory on its path was replaced by a symlink?); not mounting there`);
    }
  }

  /** A helper that ends while it should be serving is restarted with exponential back-off. */
  private async onHelperExit(runtime: MountRuntime, helper: HelperProcess, exit: HelperExit): Promise<void> {
    if (runtime.helper !== helper || runtime.stoppingHelper === helper || this.shuttingDown || !this.runtimes.has(runtime.record.Id)) return;
    const log = mountLogger(this.logger, runtime.record);
    runtime.helper = undefined;
    const ranFor = Date.now() - Date.parse(runtime.startedAt ?? new Date().toISOString());
    runtime.consecutiveFailures = ranFor > HEALTHY_RUN_MS ? 1 : runtime.consecutiveFailures + 1;
    runtime.error = `mount helper ended unexpectedly (${describeExit(exit)}): ${helper.lastStderr() || 'no output'}`;
    log.error({ exit, helperPid: helper.pid }, 'mount helper ended unexpectedly');
    // A helper that keeps dying at once is not resumed forever: after a few tries the mount starts afresh.
    if (runtime.connection !== undefined && runtime.consecutiveFailures <= MAX_CONSECUTIVE_FAILURES) {
      const resumed = await runtime.lock.run(async () => {
        if (runtime.helper !== undefined || this.shuttingDown || !this.runtimes.has(runtime.record.Id)) return true;
        return this.resume(runtime, helper, log);
      });
      if (resumed) return;
    }
    this.releaseConnection(runtime);
    this.attachments.forget(runtime.record);
    try {
      await detachMount(runtime.record.Target, { lazyIfBusy: true, timeoutMs: this.options.healthTimeoutMs });
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
      void runtime.lock.run(async () => {
        if (this.shuttingDown || runtime.status !== 'restarting') return;
        runtime.restarts += 1;
        try {
          await this.start(runtime);
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
    const probe = probeMount(runtime.record.Target, this.options.healthTimeoutMs);
    // A probe stuck on a hung connection holds its child until the connection is aborted: never start a second one.
    void probe.ended.then(() => { runtime.probing = false; });
    const result = await probe.result;
    // The mount may have been stopped or restarted while the probe ran: its result is about the old helper.
    if (runtime.helper !== helper || (runtime.status !== 'mounted' && runtime.status !== 'unhealthy')) return;
    const log = mountLogger(this.logger, runtime.record);
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

function closeConnection(connection: HeldConnection): void {
  try {
    closeSync(connection.deviceFd);
  } catch {
    // closed already
  }
  void rm(connection.journalPath, { force: true }).catch(() => undefined);
}

function signalQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Gone already: nothing left to stop or continue.
  }
}
