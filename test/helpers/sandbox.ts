/**
 * Mount harness for the union filesystem tests.
 *
 * A Sandbox owns one temp dir and every mount made under it. `t.teardown` unmounts them all (newest first,
 * escalating umount -> umount -l -> fusermount -uz) and then removes the temp dir, so a failing test never
 * leaves a mount or a directory behind.
 *
 * Three overlay implementations can be mounted with the same arguments:
 *  - 'kernel': `mount -t overlay` with redirect_dir=on,index=on, the oracle;
 *  - 'fuse-overlayfs': Debian's fuse-overlayfs, used to validate the harness itself;
 *  - 'strata': dist/lib/cli/strata-overlay.js, the program under test.
 * The candidate compared against the kernel is chosen by STRATA_TEST_CANDIDATE (default strata), and strata's
 * FUSE transport by STRATA_TEST_TRANSPORT (default: strata's own default).
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { readMountTableSync } from '../../lib/mounts/mountinfo.js';
import { parseOptions } from '../../lib/union/params.js';
import { builtFile, repoRoot } from './build.js';

export type OverlayKind = 'kernel' | 'fuse-overlayfs' | 'strata';

export { repoRoot };
export const strataOverlayJs = path.join(repoRoot, 'dist/lib/cli/strata-overlay.js');

/** The implementation compared against the kernel; STRATA_TEST_CANDIDATE=fuse-overlayfs|strata. */
export function candidateKind(): OverlayKind {
  const wanted = process.env.STRATA_TEST_CANDIDATE ?? 'strata';
  if (wanted !== 'strata' && wanted !== 'fuse-overlayfs') {
    throw new Error(`STRATA_TEST_CANDIDATE must be "strata" or "fuse-overlayfs", not "${wanted}"`);
  }
  return wanted;
}

/**
 * The FUSE transport strata is mounted with: STRATA_TEST_TRANSPORT (e.g. `fuse-native`) adds
 * `-o transport=<it>` to every strata mount of the suites; unset, strata's default transport is used.
 */
export function strataTransportOption(): string | undefined {
  const wanted = process.env.STRATA_TEST_TRANSPORT;
  if (wanted === undefined || wanted === '') return undefined;
  if (!/^[a-z0-9-]+$/.test(wanted)) throw new Error(`STRATA_TEST_TRANSPORT must be a transport name such as "fuse-native", not "${wanted}"`);
  return wanted;
}

/**
 * The name of the transport strata's mounts use in this run: STRATA_TEST_TRANSPORT, else strata's default, read
 * from its own option parser (a build without a `transport` parameter has only fuse-native).
 */
export function strataTransportName(): string {
  const explicit = strataTransportOption();
  if (explicit !== undefined) return explicit;
  const defaults = parseOptions(['lowerdir=/']) as { transport?: string };
  return defaults.transport ?? 'fuse-native';
}

/** Why the candidate cannot run here, or undefined when it can (strata needs the build). */
export function candidateMissing(kind: OverlayKind = candidateKind()): string | undefined {
  try {
    if (kind === 'strata') builtFile(path.relative(repoRoot, strataOverlayJs));
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Throws when the candidate cannot run here: a suite without its program fails, it never skips. */
export function requireCandidate(kind: OverlayKind = candidateKind()): void {
  const missing = candidateMissing(kind);
  if (missing) throw new Error(`candidate ${kind} cannot run: ${missing}`);
}

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion; never throws for a non-zero exit. */
export function run(cmd: string, args: readonly string[], options: { cwd?: string; input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): RunResult {
  const r: SpawnSyncReturns<string> = spawnSync(cmd, args, {
    cwd: options.cwd,
    input: options.input,
    env: options.env ?? process.env,
    encoding: 'utf8',
    // SIGKILL: a process blocked on a hung FUSE server ignores anything milder.
    timeout: options.timeoutMs ?? 60_000,
    killSignal: 'SIGKILL',
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`${cmd} is not installed`, { cause: r.error });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') throw new Error(`${cmd} ${args.join(' ')} timed out (hung filesystem?)`, { cause: r.error });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Runs a program and throws with its stderr when it fails. */
export function runOk(cmd: string, args: readonly string[], options: Parameters<typeof run>[2] = {}): string {
  const r = run(cmd, args, options);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Mount points currently in this process's mount table (octal escapes decoded). */
export function mountedPaths(): string[] {
  return readMountTableSync().map((entry) => entry.mountPoint);
}

export function isMounted(mnt: string): boolean {
  return mountedPaths().includes(path.resolve(mnt));
}

/** The /proc/mounts line of a mount point, or undefined. */
export function mountLine(mnt: string): string | undefined {
  const want = path.resolve(mnt);
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').find((line) => line.split(' ')[1] === want);
}

/**
 * Unmounts robustly: umount, then umount -l, then fusermount -uz. A killed FUSE server leaves a mount that
 * answers ENOTCONN; plain umount still works for root, the later steps are for anything stuck.
 */
export function unmountRobustly(mnt: string): void {
  for (const [cmd, args] of [['umount', [mnt]], ['umount', ['-l', mnt]], ['fusermount', ['-uz', mnt]], ['fusermount3', ['-uz', mnt]]] as const) {
    if (!isMounted(mnt)) return;
    try {
      run(cmd, args, { timeoutMs: 30_000 });
    } catch {
      // a missing fusermount is fine: try the next step
    }
  }
  if (isMounted(mnt)) throw new Error(`could not unmount ${mnt}`);
}

export interface OverlayDirs {
  /** Lower layers, top first (the leftmost lowerdir). */
  lowers: string[];
  upper?: string;
  work?: string;
  mnt: string;
}

export interface MountedOverlay extends OverlayDirs {
  kind: OverlayKind;
  /** The server's pid for FUSE implementations (found through the mount's fuse connection), when known. */
  serverPid?: number;
}

/** The -o option string shared by the three implementations. */
export function overlayOptions(dirs: OverlayDirs, extra: string[] = []): string {
  const opts = [`lowerdir=${dirs.lowers.join(':')}`];
  if (dirs.upper !== undefined) opts.push(`upperdir=${dirs.upper}`);
  if (dirs.work !== undefined) opts.push(`workdir=${dirs.work}`);
  return [...opts, ...extra].join(',');
}

/** The argv that mounts `kind` over `dirs` (program first). */
export function mountCommand(kind: OverlayKind, dirs: OverlayDirs, extraOptions: string[] = []): [string, string[]] {
  switch (kind) {
    case 'kernel': {
      // The oracle's defaults give way to the same options given explicitly (userxattr conflicts with redirect_dir=on).
      const given = new Set(extraOptions.map((o) => o.split('=')[0]));
      const defaults = ['redirect_dir=on', 'index=on'].filter((o) => {
        const key = o.split('=')[0];
        return !given.has(key) && !(key === 'redirect_dir' && given.has('userxattr'));
      });
      return ['mount', ['-t', 'overlay', 'overlay', '-o', overlayOptions(dirs, [...defaults, ...extraOptions]), dirs.mnt]];
    }
    case 'fuse-overlayfs':
      return ['fuse-overlayfs', ['-o', overlayOptions(dirs, extraOptions), dirs.mnt]];
    case 'strata': {
      const transport = strataTransportOption();
      return [process.execPath, [strataOverlayJs, '-o', overlayOptions(dirs, transport === undefined ? extraOptions : [`transport=${transport}`, ...extraOptions]), dirs.mnt]];
    }
  }
}

/** PIDs of processes whose argv mentions the mount point and that hold /dev/fuse open. */
export function fuseServerPids(mnt: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (!argv.includes(path.resolve(mnt)) && !argv.includes(mnt)) continue;
      const fds = fs.readdirSync(`/proc/${entry}/fd`);
      if (fds.some((fd) => { try { return fs.readlinkSync(`/proc/${entry}/fd/${fd}`) === '/dev/fuse'; } catch { return false; } })) {
        pids.push(Number(entry));
      }
    } catch {
      // the process went away while we looked
    }
  }
  return pids;
}

interface TeardownHost {
  teardown(fn: () => void | Promise<void>): void;
}

/**
 * The hang watchdog runs on its own thread, because a hung FUSE server blocks the test's main thread inside a
 * synchronous syscall, where no timer or signal handler of ours can run (and tap's timeout kill would skip the
 * teardown, leaving mounts behind). When the limit passes it aborts every FUSE connection mounted under the
 * sandbox (fusectl abort, or SIGKILL of the server): the blocked calls then fail with
 * ECONNABORTED, the test fails with that, and the teardown runs and unmounts as usual.
 */
const WATCHDOG_WORKER = new URL('./watchdog-worker.mjs', import.meta.url);

/** One test's temp dir and mounts, cleaned up in t.teardown even when the test fails. */
export class Sandbox {
  readonly root: string;
  private readonly mounts: string[] = [];
  private readonly extraCleanups: (() => void)[] = [];
  private readonly watchdog: Worker;

  /**
   * Makes a sandbox whose watchdog is running. A worker only starts while the main thread's event loop turns,
   * so this waits for it: a watchdog still starting up when the main thread blocks would never fire.
   * hangLimitMs: after this long, FUSE mounts under the sandbox are aborted (keep it below tap's timeout).
   */
  static async create(t: TeardownHost, label: string, options: { hangLimitMs?: number } = {}): Promise<Sandbox> {
    const box = new Sandbox(t, label, options);
    await once(box.watchdog, 'message');
    return box;
  }

  private constructor(t: TeardownHost, label: string, options: { hangLimitMs?: number } = {}) {
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), `strata-union-${label}-`));
    this.watchdog = new Worker(WATCHDOG_WORKER, { workerData: { root: this.root, limitMs: options.hangLimitMs ?? 180_000 } });
    this.watchdog.unref();
    t.teardown(() => this.cleanup());
  }

  /** A fresh empty directory under the sandbox. */
  dir(name: string): string {
    const p = path.join(this.root, name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  }

  /**
   * The dirs of one overlay a test mounts by its own means: a lower filled by `fill`, empty upper and work, and a
   * mount point that teardown unmounts.
   */
  overlayDirs(fill: (lower: string) => void): { lower: string; upper: string; work: string; mnt: string } {
    const lower = this.dir('lower');
    fill(lower);
    const mnt = this.dir('mnt');
    this.track(mnt);
    return { lower, upper: this.dir('upper'), work: this.dir('work'), mnt };
  }

  /** Registers a cleanup step that runs before mounts are torn down (e.g. kill a helper process). */
  onCleanup(fn: () => void): void {
    this.extraCleanups.push(fn);
  }

  /** Tracks a mount point made by other means, so teardown unmounts it. */
  track(mnt: string): void {
    if (!this.mounts.includes(mnt)) this.mounts.push(mnt);
  }

  /** Mounts `kind` and waits until it is live; throws with the program's stderr on failure. */
  mount(kind: OverlayKind, dirs: OverlayDirs, extraOptions: string[] = []): MountedOverlay {
    fs.mkdirSync(dirs.mnt, { recursive: true });
    if (dirs.work !== undefined) fs.mkdirSync(dirs.work, { recursive: true });
    this.track(dirs.mnt);
    const [cmd, args] = mountCommand(kind, dirs, extraOptions);
    const r = run(cmd, args, { timeoutMs: 60_000 });
    if (r.status !== 0) throw new Error(`mounting ${kind} on ${dirs.mnt} failed (exit ${r.status ?? r.signal}): ${r.stderr.trim()}`);
    if (!isMounted(dirs.mnt)) throw new Error(`${kind} exited 0 but ${dirs.mnt} is not in /proc/mounts`);
    const mounted: MountedOverlay = { ...dirs, kind };
    if (kind !== 'kernel') mounted.serverPid = fuseServerPids(dirs.mnt)[0];
    return mounted;
  }

  /** Unmounts and, for FUSE servers, waits (bounded) for the server process to exit. */
  unmount(m: MountedOverlay | string): void {
    const mnt = typeof m === 'string' ? m : m.mnt;
    const pids = fuseServerPids(mnt);
    unmountRobustly(mnt);
    waitForExit(pids);
  }

  cleanup(): void {
    this.watchdog.postMessage('stop');
    for (const fn of this.extraCleanups.splice(0)) {
      try { fn(); } catch { /* keep cleaning */ }
    }
    const errors: unknown[] = [];
    for (const mnt of [...this.mounts].reverse()) {
      try { this.unmount(mnt); } catch (err) { errors.push(err); }
    }
    // Anything mounted below the sandbox by a test that did not track it.
    for (const mnt of mountedPaths().filter((p) => p.startsWith(this.root + path.sep)).reverse()) {
      try { unmountRobustly(mnt); } catch (err) { errors.push(err); }
    }
    if (errors.length === 0) removeTree(this.root);
    if (errors.length) throw new Error(`sandbox ${this.root} cleanup failed: ${errors.map(String).join('; ')}`);
  }
}

/**
 * rm -rf of a test's temp dir. Node's rmSync builds every path in full and fails (ENAMETOOLONG) on trees deeper
 * than PATH_MAX, which the long-path scenarios make; coreutils rm walks by fd, so it takes over then.
 */
export function removeTree(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENAMETOOLONG') throw err;
    runOk('rm', ['-rf', '--', dir]);
  }
}

/** Waits until the given processes are gone (bounded, so a stuck server does not hang the suite). */
export function waitForExit(pids: number[], limitMs = 10_000): boolean {
  const deadline = Date.now() + limitMs;
  const alive = () => pids.filter((pid) => { try { process.kill(pid, 0); return !isZombie(pid); } catch { return false; } });
  while (alive().length && Date.now() < deadline) sleepMs(20);
  return alive().length === 0;
}

function isZombie(pid: number): boolean {
  try {
    return /\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
export function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}
