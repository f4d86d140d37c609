/**
 * What a daemon mount may do to the host (issue 7, sections 3-5), with a real daemon, real helpers and real
 * processes: targets that are symlinks, system paths or the state dir are refused before any helper starts; the
 * allow-list; a slow or failing helper neither blocks other creates nor leaves anything behind; a target replaced
 * by a symlink while the daemon is stopped; setuid binaries and device nodes are inert unless --suid/--dev; a hung
 * (SIGSTOPped) helper is reported unhealthy and `unmount --force` aborts its connection; a hung daemon gives the
 * CLI a clear error.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import {
  isAlive, isMounted, makeLayer, mountPoints, rawRequest, startDaemon, stagedExecStart, strataCli, strataOverlayJs, tempDir, waitFor,
  type CliResult, type DaemonHandle, type Teardown,
} from './helpers/daemon-harness.js';

interface MountView {
  Id: string;
  Name: string;
  Target: string;
  Suid: boolean;
  Dev: boolean;
  State: { Status: string; Running: boolean; Pid: number; Error: string };
}

const NOBODY = 65534;

async function daemonWith(t: Teardown, label: string, config: Record<string, unknown> = {}) {
  const dir = tempDir(t, label);
  fs.writeFileSync(path.join(dir, 'stratad.json'), JSON.stringify(config));
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const options = { root: path.join(dir, 'root'), socket: path.join(dir, 'run/strata.sock'), execStart, extraArgs: ['--config', path.join(dir, 'stratad.json')] };
  const daemon = await startDaemon(t, options);
  const lower = makeLayer(path.join(dir, 'lower'), { 'data/f': 'lower data\n' });
  return { dir, daemon, lower, options };
}

/** The CLI, run without blocking this process (so that several requests can be in flight). */
function cliAsync(daemon: DaemonHandle, args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [strataCli, '--socket', daemon.socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

function mkdirs(...dirs: string[]): void {
  for (const d of dirs) fs.mkdirSync(d, { recursive: true });
}

function mountsUnder(dir: string): string[] {
  return mountPoints().filter((m) => m === dir || m.startsWith(`${dir}/`));
}

t.test('targets that are symlinks, system paths or the state dir are refused before any helper starts', async (t) => {
  const { dir, daemon, lower } = await daemonWith(t, 'safety-targets');
  mkdirs(path.join(dir, 'real'), path.join(dir, 'realparent/mnt'));
  fs.symlinkSync(path.join(dir, 'real'), path.join(dir, 'link'));
  fs.symlinkSync(path.join(daemon.root, 'mounts'), path.join(dir, 'link-to-state'));
  fs.symlinkSync('/etc', path.join(dir, 'link-to-etc'));
  fs.symlinkSync(path.join(dir, 'realparent'), path.join(dir, 'parentlink'));

  const refused: Array<[string, RegExp]> = [
    [path.join(dir, 'link'), /STRATA_BAD_DIR: target ".*\/link" is a symlink/],
    [path.join(dir, 'link-to-state'), /STRATA_BAD_DIR: target ".*\/link-to-state" is a symlink/],
    [path.join(dir, 'link-to-etc'), /is a symlink/],
    ['/etc', /STRATA_BAD_DIR: target "\/etc" is a system path/],
    ['/usr/lib', /target "\/usr\/lib" is a system path \(\/usr and everything below it are refused\)/],
    ['/proc', /is a system path/],
    ['/sys/fs', /is a system path/],
    ['/dev', /is a system path/],
    ['/', /target "\/" is a system directory/],
    ['/tmp', /target "\/tmp" is a system directory/],
    [daemon.root, /is inside the state dir/],
    [path.join(daemon.root, 'mounts'), /is inside the state dir/],
    [dir, /contains the state dir/],
    [path.join(dir, 'run'), /contains the control socket/],
    [path.join(dir, 'parentlink/nope'), /does not exist/],
  ];
  for (const [target, message] of refused) {
    const r = daemon.cli(['mount', 'create', lower, '--target', target]);
    t.equal(r.status, 1, `${target} is refused`);
    t.match(r.stderr, message, `${target}: ${r.stderr.trim()}`);
  }
  const relative = await rawRequest(daemon.socket, 'POST', '/mounts/create', JSON.stringify({ Target: 'mnt', Sources: [lower] }), { 'content-type': 'application/json' });
  t.equal(relative.status, 400);
  t.match(relative.body, /must be an absolute path/, 'a relative target in the API is refused');

  t.notMatch(daemon.stderr, /starting mount helper/, 'no helper was started for any refused target');
  t.same(daemon.json<MountView[]>(['mount', 'ls']), [], 'no records');
  t.same(fs.readdirSync(path.join(daemon.root, 'mounts')), [], 'no mount dirs left in the state dir');
  t.same(mountsUnder(dir), [], 'nothing mounted');
  t.same(fs.readdirSync(path.join(dir, 'real')), [], 'the symlink destination is untouched');

  // Symlinks above the target are resolved: the mount is made and recorded at the real path.
  const viaParent = daemon.json<MountView>(['mount', 'create', lower, '--target', path.join(dir, 'parentlink/mnt'), '--name', 'p']);
  t.equal(viaParent.Target, path.join(dir, 'realparent/mnt'), 'the recorded target is the real path');
  t.equal(viaParent.State.Status, 'mounted');
  t.ok(isMounted(path.join(dir, 'realparent/mnt')), 'mounted at the real path');
  t.equal(fs.readFileSync(path.join(dir, 'parentlink/mnt/data/f'), 'utf8'), 'lower data\n');
  t.equal(daemon.cli(['mount', 'rm', 'p']).status, 0);
  t.same(mountsUnder(dir), []);
});

t.test('allowedTargets, slow and failing helpers, and a target replaced by a symlink at start-up', async (t) => {
  const dir = tempDir(t, 'safety-allow');
  const allowed = path.join(dir, 'allowed');
  mkdirs(allowed);
  // A helper that, for targets named "slow", mounts nothing until the gate file exists and then fails; for the
  // others it is strata-overlay.
  const program = path.join(dir, 'helper.sh');
  const gate = path.join(dir, 'gate');
  fs.writeFileSync(program, `#!/bin/sh
for last; do :; done
case "$last" in
  *slow*) while [ ! -e ${gate} ]; do sleep 0.05; done; echo "gave up" >&2; exit 3 ;;
esac
exec "${process.execPath}" "${strataOverlayJs}" "$@"
`, { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'stratad.json'), JSON.stringify({ allowedTargets: [allowed], mountProgram: program }));
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const options = { root: path.join(dir, 'root'), socket: path.join(dir, 'run/strata.sock'), execStart, extraArgs: ['--config', path.join(dir, 'stratad.json')] };
  const daemon = await startDaemon(t, options);
  const lower = makeLayer(path.join(dir, 'lower'), { 'data/f': 'lower data\n' });
  mkdirs(path.join(dir, 'elsewhere'), path.join(allowed, 'a'), path.join(allowed, 'slow'), path.join(allowed, 'b'));

  t.same(daemon.json<{ AllowedTargets: string[] }>(['info']).AllowedTargets, [allowed], 'info shows the allow-list');
  const outside = daemon.cli(['mount', 'create', lower, '--target', path.join(dir, 'elsewhere')]);
  t.equal(outside.status, 1);
  t.match(outside.stderr, /STRATA_BAD_DIR: target ".*\/elsewhere" is outside the allowed targets \(.*\/allowed\)/);

  // While one create waits on a helper that never mounts, other creates and requests go on.
  let slowDone = false;
  const slow = cliAsync(daemon, ['mount', 'create', lower, '--target', path.join(allowed, 'slow'), '--name', 'slow']).then((r) => { slowDone = true; return r; });
  await Promise.race([daemon.waitForLog(/allowed\/slow"\][^\n]*"starting mount helper"/), slow.then((r) => { throw new Error(`the slow create ended early: ${r.stderr}`); })]);
  const sameName = await cliAsync(daemon, ['mount', 'create', lower, '--target', path.join(allowed, 'b'), '--name', 'slow']);
  t.match(sameName.stderr, /STRATA_CONFLICT: a mount named "slow" /, 'the same name is refused at once');
  const fast = await cliAsync(daemon, ['mount', 'create', lower, '--target', path.join(allowed, 'a'), '--name', 'a']);
  t.equal(fast.status, 0, `another create completes meanwhile ${fast.stderr}`);
  t.notOk(slowDone, 'the slow create was still waiting when the other one completed');
  const listed = await cliAsync(daemon, ['--json', 'mount', 'ls']);
  t.same((JSON.parse(listed.stdout) as MountView[]).map((m) => [m.Name, m.State.Status]), [['slow', 'starting'], ['a', 'mounted']], 'the API answers meanwhile');
  fs.writeFileSync(gate, '');
  const slowResult = await slow;
  t.equal(slowResult.status, 1);
  t.match(slowResult.stderr, /STRATA_MOUNT_FAILED: mount helper exited \(exit code 3\) before .*slow was mounted: gave up/);
  t.same(mountsUnder(dir), [path.join(allowed, 'a')], 'failed creates leave no mount');
  const ls = daemon.json<MountView[]>(['mount', 'ls']);
  t.same(ls.map((m) => m.Name), ['a'], 'failed creates leave no record');
  t.same(fs.readdirSync(path.join(daemon.root, 'mounts')), [ls[0]!.Id], 'failed creates leave no dir in the state dir');

  // Stopped daemon; the target is replaced by a symlink into the state dir; start-up must not follow it.
  fs.writeFileSync(path.join(allowed, 'a/data/written'), 'kept\n');
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });
  fs.renameSync(path.join(allowed, 'a'), path.join(allowed, 'a-moved'));
  fs.symlinkSync(path.join(daemon.root, 'mounts'), path.join(allowed, 'a'));
  const restarted = await startDaemon(t, options);
  const [view] = restarted.json<MountView[]>(['mount', 'inspect', 'a']);
  t.equal(view!.State.Status, 'failed', 'the mount is not remounted through the symlink');
  t.match(view!.State.Error, /is a symlink/);
  t.same(mountsUnder(dir), [], 'nothing was mounted anywhere');
  t.notMatch(restarted.stderr, /starting mount helper/, 'no helper was started');
  // Put the directory back: start works again with the data.
  fs.unlinkSync(path.join(allowed, 'a'));
  fs.renameSync(path.join(allowed, 'a-moved'), path.join(allowed, 'a'));
  t.equal(restarted.cli(['mount', 'start', 'a']).status, 0);
  t.equal(fs.readFileSync(path.join(allowed, 'a/data/written'), 'utf8'), 'kept\n');
  t.equal(restarted.cli(['mount', 'rm', 'a']).status, 0);
});

t.test('setuid binaries and device nodes in a layer are inert unless the mount is created with --suid --dev', async (t) => {
  const { dir, daemon } = await daemonWith(t, 'safety-suid');
  // nobody must reach the mounts: mkdtemp made the dir 0700.
  fs.chmodSync(dir, 0o755);
  const layer = path.join(dir, 'layer');
  mkdirs(path.join(layer, 'bin'), path.join(layer, 'dev'));
  fs.writeFileSync(path.join(dir, 'euid.c'), '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("euid=%d\\n", (int)geteuid()); return 0; }\n');
  const cc = spawnSync('cc', ['-o', path.join(layer, 'bin/euid'), path.join(dir, 'euid.c')], { encoding: 'utf8' });
  t.equal(cc.status, 0, `cc builds the probe ${cc.stderr}`);
  fs.chownSync(path.join(layer, 'bin/euid'), 0, 0);
  fs.chmodSync(path.join(layer, 'bin/euid'), 0o4755);
  t.equal(spawnSync('mknod', ['-m', '666', path.join(layer, 'dev/null'), 'c', '1', '3']).status, 0);
  // The oracle, outside any mount: the setuid bit is real (the probe itself works).
  const direct = spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', path.join(layer, 'bin/euid')], { encoding: 'utf8' });
  t.equal(direct.stdout, 'euid=0\n', 'run directly from its dir, the setuid probe runs as root');

  const runAsNobody = (mnt: string) => spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', path.join(mnt, 'bin/euid')], { encoding: 'utf8' });
  const writeDevice = (mnt: string) => spawnSync('sh', ['-c', `echo x > ${path.join(mnt, 'dev/null')}`], { encoding: 'utf8' });
  const mountFlags = (mnt: string) => {
    const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt);
    return (line?.split(' ')[5] ?? '').split(',');
  };

  const safe = path.join(dir, 'safe');
  mkdirs(safe);
  t.equal(daemon.cli(['mount', 'create', layer, '--target', safe, '--name', 'safe']).status, 0);
  const safeView = daemon.json<MountView[]>(['mount', 'inspect', 'safe'])[0]!;
  t.same([safeView.Suid, safeView.Dev], [false, false], 'inspect shows Suid and Dev off');
  t.ok(mountFlags(safe).includes('nosuid') && mountFlags(safe).includes('nodev'), `the kernel mount is nosuid,nodev (${mountFlags(safe).join(',')})`);
  const safeRun = runAsNobody(safe);
  t.equal(safeRun.status, 0, safeRun.stderr);
  t.equal(safeRun.stdout, `euid=${NOBODY}\n`, 'nobody gets no privileges from the setuid binary');
  t.not(writeDevice(safe).status, 0, 'a device node in the layer cannot be opened');

  const risky = path.join(dir, 'risky');
  mkdirs(risky);
  t.equal(daemon.cli(['mount', 'create', layer, '--target', risky, '--name', 'risky', '--suid', '--dev']).status, 0);
  const riskyView = daemon.json<MountView[]>(['mount', 'inspect', 'risky'])[0]!;
  t.same([riskyView.Suid, riskyView.Dev], [true, true], 'inspect shows the opt-in');
  t.notOk(mountFlags(risky).includes('nosuid') || mountFlags(risky).includes('nodev'), `the kernel mount is suid,dev (${mountFlags(risky).join(',')})`);
  t.equal(runAsNobody(risky).stdout, 'euid=0\n', 'with --suid the setuid bit takes effect');
  t.equal(writeDevice(risky).status, 0, 'with --dev the device node works');

  // The choice is in the record: a restart remounts each the same way.
  await daemon.kill('SIGTERM');
  const restarted = await startDaemon(t, { root: daemon.root, socket: daemon.socket, execStart: daemon.execStart, extraArgs: daemon.extraArgs });
  t.equal(runAsNobody(safe).stdout, `euid=${NOBODY}\n`, 'still nosuid after a restart');
  t.equal(runAsNobody(risky).stdout, 'euid=0\n', 'still suid after a restart');
  t.equal(restarted.cli(['mount', 'rm', 'safe']).status, 0);
  t.equal(restarted.cli(['mount', 'rm', 'risky']).status, 0);
});

t.test('a hung helper is reported unhealthy and --force aborts its connection; a hung daemon gives the CLI an error', async (t) => {
  const { dir, daemon, lower } = await daemonWith(t, 'safety-hung', { healthIntervalMs: 300, healthTimeoutMs: 1500, helperExitGraceMs: 500 });
  const target = path.join(dir, 'mnt');
  mkdirs(target);
  t.equal(daemon.cli(['mount', 'create', lower, '--target', target, '--name', 'h']).status, 0);
  fs.writeFileSync(path.join(target, 'data/mine'), 'written before the hang\n');
  const helperPid = daemon.json<MountView[]>(['mount', 'inspect', 'h'])[0]!.State.Pid;
  t.ok(helperPid > 0);
  t.teardown(() => { try { process.kill(helperPid, 'SIGCONT'); } catch { /* gone */ } });

  // A shell cd'd into the mount keeps it busy.
  const holder = spawn('sleep', ['600'], { cwd: target, stdio: 'ignore' });
  t.teardown(() => { holder.kill('SIGKILL'); });

  process.kill(helperPid, 'SIGSTOP');
  // From here on this process must not touch the mount: only child processes do.
  const unhealthy = await waitFor('the mount to be reported unhealthy', () => {
    const view = daemon.json<MountView[]>(['mount', 'inspect', 'h'])[0]!;
    return view.State.Status === 'unhealthy' ? view : undefined;
  });
  t.match(unhealthy.State.Error, new RegExp(`answers nothing.*the helper \\(pid ${helperPid}\\) is stopped.*--force`), unhealthy.State.Error);
  t.match(daemon.cli(['mount', 'ls']).stdout, /h\s+[0-9a-f]{12}\s+unhealthy/, 'ls shows it too');

  // A reader stuck on the hung helper.
  const reader = spawn('cat', [path.join(target, 'data/f')], { stdio: 'ignore' });
  const readerExit = new Promise<number | null>((resolve) => reader.on('close', (code) => resolve(code)));
  await waitFor('the reader to wait on the helper', () => /fuse|request_wait/.test(fs.readFileSync(`/proc/${reader.pid}/stack`, 'utf8')));

  const plain = daemon.cli(['mount', 'unmount', 'h']);
  t.equal(plain.status, 1, 'a plain unmount of a hung, busy mount fails rather than hangs');
  t.match(plain.stderr, /STRATA_MOUNT_BUSY/);
  const forced = daemon.cli(['mount', 'unmount', '--force', 'h']);
  t.equal(forced.status, 0, `--force unmount completes ${forced.stderr}`);
  t.notOk(isMounted(target), 'nothing is left mounted');
  t.not(await readerExit, 0, 'the stuck reader was released with an error (the connection was aborted)');
  await waitFor('the stopped helper to be gone', () => !isAlive(helperPid));
  t.match(daemon.stderr, /FUSE connection was aborted/, 'the log says the connection was aborted');
  t.equal(daemon.json<MountView[]>(['mount', 'inspect', 'h'])[0]!.State.Status, 'unmounted');
  holder.kill('SIGKILL');

  t.equal(daemon.cli(['mount', 'start', 'h']).status, 0, 'the mount starts again');
  t.equal(fs.readFileSync(path.join(target, 'data/mine'), 'utf8'), 'written before the hang\n', 'with its upper data');

  // A stopped daemon: the CLI gives up with a clear error instead of hanging.
  process.kill(daemon.pid, 'SIGSTOP');
  t.teardown(() => { try { process.kill(daemon.pid, 'SIGCONT'); } catch { /* gone */ } });
  const r = spawnSync(process.execPath, [strataCli, '--socket', daemon.socket, 'mount', 'ls'], { encoding: 'utf8', env: { ...process.env, STRATA_CLIENT_TIMEOUT: '2' }, timeout: 60_000 });
  t.equal(r.status, 1, 'the CLI exits 1');
  t.match(r.stderr, /STRATA_DAEMON_UNREACHABLE: the daemon on .* did not answer GET \/mounts\/json within 2 s: it may be stopped or hung/);
  const images = spawnSync(process.execPath, [strataCli, '--socket', daemon.socket, 'image', 'ls'], { encoding: 'utf8', env: { ...process.env, STRATA_CLIENT_TIMEOUT: '2' }, timeout: 60_000 });
  t.equal(images.status, 1);
  t.match(images.stderr, /did not answer GET \/_ping within 2 s/, 'image commands too');
  process.kill(daemon.pid, 'SIGCONT');
  t.equal(daemon.cli(['mount', 'rm', 'h']).status, 0);
});
