/**
 * Harness for the stratad tests: the daemon is started exactly as the systemd unit's ExecStart does (through the
 * wrapper that scripts/install.sh writes, staged under a temp DESTDIR), with a temp --root and --socket, and driven
 * through the real `strata` CLI.
 *
 * Teardown (registered on the tap test that created the resource) kills the daemon, ends every helper process whose
 * command line names the temp dir, detaches every mount under the temp dir, and removes the dir, so a failing test
 * leaves nothing behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { builtFile, repoRoot } from './build.js';
import { readMountTableSync } from '../../lib/mounts/mountinfo.js';

export { repoRoot };
// The daemon tests drive the built programs: without the build, importing the harness fails.
export const strataCli = builtFile('dist/lib/cli/strata.js');
export const strataOverlayJs = builtFile('dist/lib/cli/strata-overlay.js');

export interface Teardown {
  teardown(fn: () => unknown): void;
}

/**
 * The helper the tests mount with: the daemon's default (strata-overlay next to it) unless
 * STRATA_TEST_MOUNT_PROGRAM names another program with fuse-overlayfs's command line.
 */
export function testMountProgram(): string | undefined {
  return process.env.STRATA_TEST_MOUNT_PROGRAM || undefined;
}

export function mountPoints(): string[] {
  return readMountTableSync().map((entry) => entry.mountPoint);
}

export function isMounted(dir: string): boolean {
  return mountPoints().includes(dir);
}

/** Pids of processes whose command line mentions `needle` (helpers serving mounts under a temp dir). */
export function pidsMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (/\) Z /.test(stat)) continue;
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(needle)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/**
 * True until every thread of the process has exited. A killed multi-threaded process (a FUSE helper: libfuse's
 * workers) shows its leader as a zombie while other threads are still exiting and still hold the shared fds, such
 * as /dev/fuse; only when they are gone from /proc/PID/task has the FUSE connection been aborted.
 */
export function isAlive(pid: number): boolean {
  try {
    if (!/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))) return true;
    return fs.readdirSync(`/proc/${pid}/task`).length > 1;
  } catch {
    return false;
  }
}

/** A temp dir that is cleaned (processes, mounts, files) when the test ends. */
export function tempDir(t: Teardown, label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `strata-${label}-`));
  t.teardown(async () => {
    for (const pid of pidsMentioning(dir)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    }
    await sleep(100);
    for (const mnt of mountPoints().filter((m) => m.startsWith(`${dir}/`)).reverse()) {
      spawnSync('umount', ['-l', mnt]);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Stages scripts/install.sh under `dest` (DESTDIR) and returns the unit's ExecStart argv, mapped into `dest`. */
export function stagedExecStart(dest: string): string[] {
  const r = spawnSync('bash', [path.join(repoRoot, 'scripts/install.sh')], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`install.sh failed: ${r.stderr}`);
  const unit = fs.readFileSync(path.join(dest, 'etc/systemd/system/stratad.service'), 'utf8');
  const line = unit.split('\n').find((l) => l.startsWith('ExecStart='));
  if (line === undefined) throw new Error('the unit has no ExecStart');
  const argv = line.slice('ExecStart='.length).trim().split(/\s+/);
  return [path.join(dest, argv[0] ?? ''), ...argv.slice(1)];
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export class DaemonHandle {
  readonly root: string;
  readonly socket: string;
  readonly execStart: string[];
  readonly extraArgs: string[];
  readonly env: NodeJS.ProcessEnv;
  child: ChildProcess | undefined;
  stderr = '';
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(options: { root: string; socket: string; execStart: string[]; extraArgs?: string[]; env?: NodeJS.ProcessEnv }) {
    this.root = options.root;
    this.socket = options.socket;
    this.execStart = options.execStart;
    this.extraArgs = options.extraArgs ?? [];
    this.env = options.env ?? {};
  }

  get argv(): string[] {
    const program = testMountProgram();
    return [
      ...this.execStart.slice(1),
      '--root', this.root, '--socket', this.socket, '--log-level', 'debug',
      ...(program === undefined || this.extraArgs.includes('--mount-program') ? [] : ['--mount-program', program]),
      ...this.extraArgs,
    ];
  }

  /** Spawns the daemon and resolves once its API answers; rejects with its stderr if it exits first. */
  async start(): Promise<void> {
    this.stderr = '';
    this.exit = undefined;
    const child = spawn(this.execStart[0] ?? '', this.argv, { env: { ...process.env, ...this.env }, stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr!.on('data', (chunk: Buffer) => { this.stderr += chunk.toString(); });
    // 'close' (not 'exit') so that all of stderr has been read when the exit is seen.
    this.exited = new Promise((resolve) => child.on('close', (code, signal) => { this.exit = { code, signal }; resolve(); }));
    for (let i = 0; i < 600; i++) {
      if (this.exit !== undefined) throw new Error(`stratad exited (${JSON.stringify(this.exit)}) before answering: ${this.stderr}`);
      if (await pingSocket(this.socket)) return;
      await sleep(50);
    }
    throw new Error(`stratad did not answer on ${this.socket}: ${this.stderr}`);
  }

  /** Waits until the daemon's log (its stderr, read asynchronously) matches `pattern`. */
  async waitForLog(pattern: RegExp): Promise<string> {
    return waitFor(`a log line matching ${pattern}`, () => (pattern.test(this.stderr) ? this.stderr : undefined));
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  async kill(signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.exit === undefined) this.child?.kill(signal);
    await this.exited;
    return this.exit!;
  }

  /** Runs the real CLI against this daemon's socket. */
  cli(args: string[], options: { uid?: number } = {}): CliResult {
    const base = [strataCli, '--socket', this.socket, ...args];
    const r = options.uid === undefined
      ? spawnSync(process.execPath, base, { encoding: 'utf8', timeout: 120_000 })
      : spawnSync('setpriv', [`--reuid=${options.uid}`, `--regid=${options.uid}`, '--clear-groups', process.execPath, ...base], { encoding: 'utf8', timeout: 120_000 });
    return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** The CLI's JSON output; throws with stderr when the command fails. */
  json<T>(args: string[]): T {
    const r = this.cli(['--json', ...args]);
    if (r.status !== 0) throw new Error(`strata ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }
}

/** Starts a daemon on `root`/`socket` and registers its teardown (SIGKILL if still running). */
export async function startDaemon(t: Teardown, options: ConstructorParameters<typeof DaemonHandle>[0]): Promise<DaemonHandle> {
  const daemon = new DaemonHandle(options);
  t.teardown(async () => {
    if (daemon.exit === undefined && daemon.child !== undefined) await daemon.kill('SIGKILL');
  });
  await daemon.start();
  return daemon;
}

export function pingSocket(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath, path: '/_ping', method: 'GET' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200));
    });
    req.on('error', () => resolve(false));
    req.end();
  });
}

/** One raw HTTP request on the socket; resolves with status, content type and body text. */
export function rawRequest(socketPath: string, method: string, urlPath: string, body?: string, headers: Record<string, string> = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: urlPath, method, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: text }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** Polls `check` (no timing assertions: it only bounds how long a broken build can hang). */
export async function waitFor<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, limitMs = 30_000): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await sleep(50);
  }
}

/** A lower layer dir with the given files (path -> content). */
export function makeLayer(dir: string, files: Record<string, string>): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), content);
  }
  return dir;
}
