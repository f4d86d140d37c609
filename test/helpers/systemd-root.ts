/**
 * A real systemd (PID 1 of its own PID, mount, UTS, IPC and network namespaces) booted over a Debian root, for
 * testing stratad as a service. Never over the host's root: systemd's boot-time `systemd-tmpfiles --remove` would
 * empty the host's /tmp and its gettys would take the host's ttys.
 *
 * - The root is built once with debootstrap (minbase plus systemd, dbus, libfuse2, fuse3, procps) and cached in
 *   STRATA_SYSTEMD_ROOT_CACHE (default /var/cache/strata-test/systemd-bookworm); a missing cache is rebuilt.
 * - Each boot mounts kernel overlayfs over the cached root with a temp upper, so the cache is never changed and
 *   every test starts from the same root.
 * - The project checkout and the host's node are bind-mounted read-only at their own paths, so the wrappers that
 *   scripts/install.sh writes work inside unchanged.
 * - Everything is mounted inside the private mount namespace: when systemd exits (SIGRTMIN+4, or SIGKILL of the
 *   namespace's PID 1 as a last resort) every mount of the test goes with it.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { repoRoot } from './build.js';

export const SYSTEMD_ROOT_CACHE = process.env.STRATA_SYSTEMD_ROOT_CACHE || '/var/cache/strata-test/systemd-bookworm';
const DEBIAN_MIRROR = process.env.STRATA_DEBIAN_MIRROR || 'http://deb.debian.org/debian';
const PACKAGES = ['systemd', 'dbus', 'libfuse2', 'fuse3', 'procps', 'util-linux'];
/** Bumped when PACKAGES or the preparation below change, so an old cache is rebuilt. */
const ROOT_VERSION = '1';

interface Teardown {
  teardown(fn: () => unknown): void;
}

function run(cmd: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', input: options.input, timeout: options.timeoutMs ?? 120_000 });
}

function must(result: SpawnSyncReturns<string>, what: string): string {
  if (result.error !== undefined || result.status !== 0) {
    throw new Error(`${what} failed (status ${result.status}${result.error ? `, ${result.error.message}` : ''}): ${(result.stderr ?? '').trim().slice(-2000)}`);
  }
  return result.stdout;
}

/**
 * The cached Debian root, built when missing. Fails with a clear reason (no debootstrap, no mirror) rather than
 * skipping: a test that cannot boot systemd must not pass silently.
 */
export function ensureSystemdRoot(): string {
  const stamp = path.join(SYSTEMD_ROOT_CACHE, '.strata-test-root');
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8').trim() === ROOT_VERSION) return SYSTEMD_ROOT_CACHE;
  if (run('sh', ['-c', 'command -v debootstrap']).status !== 0) {
    throw new Error('debootstrap is not installed (scripts/setup.sh installs it): cannot build the systemd test root');
  }
  fs.mkdirSync(path.dirname(SYSTEMD_ROOT_CACHE), { recursive: true });
  const staging = `${SYSTEMD_ROOT_CACHE}.tmp-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  must(run('debootstrap', ['--variant=minbase', `--include=${PACKAGES.join(',')}`, 'bookworm', staging, DEBIAN_MIRROR], { timeoutMs: 900_000 }),
    `debootstrap of the systemd test root from ${DEBIAN_MIRROR}`);
  // No gettys, no hardware units; a group for the control socket, as scripts/install.sh makes on a real host.
  for (const unit of ['getty@.service', 'serial-getty@.service', 'console-getty.service', 'getty.target', 'systemd-udevd.service',
    'systemd-udevd-control.socket', 'systemd-udevd-kernel.socket', 'systemd-networkd.service', 'systemd-resolved.service']) {
    const link = path.join(staging, 'etc/systemd/system', unit);
    fs.rmSync(link, { force: true });
    fs.symlinkSync('/dev/null', link);
  }
  must(run('chroot', [staging, 'groupadd', '--system', 'strata']), 'groupadd strata in the test root');
  fs.writeFileSync(path.join(staging, '.strata-test-root'), `${ROOT_VERSION}\n`);
  fs.rmSync(SYSTEMD_ROOT_CACHE, { recursive: true, force: true });
  fs.renameSync(staging, SYSTEMD_ROOT_CACHE);
  return SYSTEMD_ROOT_CACHE;
}

export interface BootedSystemd {
  /** Host pid of the namespace's PID 1 (systemd). */
  pid: number;
  /** Runs a command inside the namespaces and root of the booted system. */
  exec(cmd: string, args: string[], options?: { input?: string; timeoutMs?: number }): SpawnSyncReturns<string>;
  /** exec, failing the test with stderr unless it exits 0. */
  must(cmd: string, args: string[], options?: { input?: string; timeoutMs?: number }): string;
  /** `systemctl show -p PROP --value UNIT`. */
  show(unit: string, property: string): string;
  /** Writes a file inside the booted root. */
  writeFile(file: string, content: string): void;
}

function bootScript(root: string, lower: string, upper: string, work: string): string {
  const node = process.execPath;
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return `set -eu
R=${q(root)}
mount -t overlay overlay -o ${q(`lowerdir=${lower},upperdir=${upper},workdir=${work}`)} "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=700 tmpfs "$R/var/lib"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5; mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8; mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
mknod -m 666 "$R/dev/fuse" c 10 229
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mkdir -p "$R"${q(repoRoot)} "$R"${q(path.dirname(node))}
mount --bind ${q(repoRoot)} "$R"${q(repoRoot)}; mount -o remount,bind,ro "$R"${q(repoRoot)}
[ -e "$R"${q(node)} ] || touch "$R"${q(node)}
mount --bind ${q(node)} "$R"${q(node)}; mount -o remount,bind,ro "$R"${q(node)}
export container=strata-test
exec chroot "$R" /lib/systemd/systemd --system --show-status=no
`;
}

function childPid(parent: number): number | undefined {
  try {
    const children = fs.readFileSync(`/proc/${parent}/task/${parent}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    return children.length > 0 ? Number(children[0]) : undefined;
  } catch {
    return undefined;
  }
}

function exited(proc: ChildProcess): boolean {
  return proc.exitCode !== null || proc.signalCode !== null;
}

/** Boots systemd over a fresh overlay of the cached root and waits until it is `running` (or `degraded`). */
export async function bootSystemd(t: Teardown, label: string): Promise<BootedSystemd> {
  const lower = ensureSystemdRoot();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `strata-systemd-${label}-`));
  const root = path.join(dir, 'root');
  const upper = path.join(dir, 'upper');
  const work = path.join(dir, 'work');
  for (const d of [root, upper, work]) fs.mkdirSync(d);
  let console = '';
  const unshare = spawn('unshare', ['--pid', '--fork', '--mount', '--uts', '--ipc', '--net', '--propagation', 'private',
    'bash', '-c', bootScript(root, lower, upper, work)], { stdio: ['ignore', 'pipe', 'pipe'] });
  unshare.stdout!.on('data', (d: Buffer) => { console = (console + d.toString()).slice(-20_000); });
  unshare.stderr!.on('data', (d: Buffer) => { console = (console + d.toString()).slice(-20_000); });
  t.teardown(async () => {
    const pid = childPid(unshare.pid!);
    if (pid !== undefined && !exited(unshare)) {
      try { process.kill(pid, 'SIGRTMIN+4'); } catch { /* gone */ }
      for (let i = 0; i < 100 && !exited(unshare); i++) await sleep(200);
      // PID 1 of the namespace: SIGKILL ends every process in it, and the mount namespace with them.
      if (!exited(unshare)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    for (let i = 0; i < 50 && !exited(unshare); i++) await sleep(100);
    if (!exited(unshare)) unshare.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  let pid: number | undefined;
  for (let i = 0; i < 100 && pid === undefined; i++) {
    if (exited(unshare)) throw new Error(`the systemd namespace exited during set-up:\n${console}`);
    await sleep(100);
    pid = childPid(unshare.pid!);
  }
  if (pid === undefined) throw new Error(`systemd did not start:\n${console}`);
  const systemdPid = pid;
  const exec = (cmd: string, args: string[], options: { input?: string; timeoutMs?: number } = {}) =>
    run('nsenter', ['-t', String(systemdPid), '-m', '-p', '-u', '-i', '-n', '-r', '-w', cmd, ...args], options);
  const booted: BootedSystemd = {
    pid: systemdPid,
    exec,
    must: (cmd, args, options) => must(exec(cmd, args, options), `${cmd} ${args.join(' ')} (in the systemd test root)`),
    show: (unit, property) => must(exec('systemctl', ['show', '-p', property, '--value', unit]), `systemctl show ${unit}`).trim(),
    // The merged root exists only inside the private mount namespace: write through it from inside.
    writeFile: (file, content) => {
      must(exec('sh', ['-c', 'mkdir -p "$(dirname "$1")" && cat > "$1"', 'sh', file], { input: content }), `writing ${file} in the systemd test root`);
    },
  };
  let state = '';
  for (let i = 0; i < 300; i++) {
    if (exited(unshare)) throw new Error(`systemd exited while booting:\n${console}`);
    // The comm of PID 1 turns from bash/chroot to systemd once it runs; before that systemctl cannot connect.
    state = exec('systemctl', ['is-system-running'], { timeoutMs: 10_000 }).stdout.trim();
    if (state === 'running' || state === 'degraded') return booted;
    await sleep(200);
  }
  throw new Error(`systemd did not finish booting (is-system-running: ${state}):\n${console}`);
}

/** Waits until `probe` returns something other than undefined, or fails naming `what`. */
export async function waitUntil<T>(what: string, probe: () => T | undefined, timeoutMs = 30_000, diagnose?: () => string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${diagnose ? `\n${diagnose()}` : ''}`);
    await sleep(200);
  }
}
