/**
 * stratad's crash behaviour with real processes: kill -9 of the daemon (helpers surviving, or killed too as systemd
 * does with the control group, leaving "Transport endpoint is not connected" mountpoints), kill -9 of one helper
 * while another mount keeps serving, and SIGTERM with a shell cd'd into a mount. Upper data must survive each.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { isAlive, isMounted, makeLayer, startDaemon, stagedExecStart, tempDir, waitFor, type DaemonHandle, type Teardown } from './helpers/daemon-harness.js';

interface MountView {
  Name: string;
  State: { Status: string; Pid: number; Restarts: number };
}

function pidOf(daemon: DaemonHandle, name: string): number {
  return daemon.json<MountView[]>(['mount', 'inspect', name])[0]?.State.Pid ?? 0;
}

/**
 * How the kernel reports a FUSE mount whose server is gone: ENOTCONN once the connection is aborted, ECONNABORTED
 * for a request that was already queued when it was. Either one is a dead mountpoint.
 */
const DEAD_CONNECTION = ['ENOTCONN', 'ECONNABORTED'];

/** The mountinfo id of the mount at `target` (a remount gets a new one). */
function mountIdOf(target: string): number | undefined {
  const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === target);
  return line === undefined ? undefined : Number(line.split(' ')[0]);
}

function statError(file: string): string | undefined {
  try {
    fs.statSync(file);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

async function setUp(t: Teardown, label: string, config?: Record<string, unknown>) {
  const dir = tempDir(t, label);
  const extraArgs: string[] = [];
  if (config !== undefined) {
    fs.writeFileSync(path.join(dir, 'stratad.json'), JSON.stringify(config));
    extraArgs.push('--config', path.join(dir, 'stratad.json'));
  }
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const lower = makeLayer(path.join(dir, 'lower'), { 'data/base': 'base\n' });
  const targets = { a: path.join(dir, 'mnt-a'), b: path.join(dir, 'mnt-b') };
  fs.mkdirSync(targets.a);
  fs.mkdirSync(targets.b);
  const options = { root: path.join(dir, 'root'), socket: path.join(dir, 'strata.sock'), execStart, extraArgs };
  const daemon = await startDaemon(t, options);
  for (const [name, target] of Object.entries(targets)) {
    const r = daemon.cli(['mount', 'create', lower, '--target', target, '--name', name]);
    if (r.status !== 0) throw new Error(r.stderr);
    fs.writeFileSync(path.join(target, 'data/written'), `upper data of ${name}\n`);
  }
  return { dir, lower, targets, daemon, options };
}

t.test('kill -9 of the daemon: restart ends the orphaned helpers and remounts with the data', async (t) => {
  const { targets, daemon, options } = await setUp(t, 'daemon-kill9');
  const oldHelpers = [pidOf(daemon, 'a'), pidOf(daemon, 'b')];
  t.ok(oldHelpers.every((p) => p > 0));
  t.same(await daemon.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });
  t.ok(oldHelpers.every(isAlive), 'the helpers outlive a kill -9 of the daemon');

  const restarted = await startDaemon(t, options);
  const views = restarted.json<MountView[]>(['mount', 'ls']);
  t.same(views.map((v) => [v.Name, v.State.Status]), [['a', 'mounted'], ['b', 'mounted']], 'both mounts are back');
  for (const pid of oldHelpers) await waitFor(`old helper ${pid} to end`, () => !isAlive(pid));
  t.ok(views.every((v) => !oldHelpers.includes(v.State.Pid)), 'the mounts are served by new, supervised helpers');
  for (const [name, target] of Object.entries(targets)) {
    t.ok(isMounted(target));
    t.equal(fs.readFileSync(path.join(target, 'data/written'), 'utf8'), `upper data of ${name}\n`, `mount ${name} kept its upper data`);
    t.equal(fs.readFileSync(path.join(target, 'data/base'), 'utf8'), 'base\n');
  }
  fs.writeFileSync(path.join(targets.a, 'after'), 'x');
  t.equal(fs.readFileSync(path.join(targets.a, 'after'), 'utf8'), 'x', 'the remounted union is writable');
  t.same(await restarted.kill('SIGTERM'), { code: 0, signal: null });
  t.notOk(isMounted(targets.a) || isMounted(targets.b), 'SIGTERM unmounted everything');
});

t.test('kill -9 of the daemon and its helpers: dead mountpoints are recovered without losing data', async (t) => {
  const { dir, targets, daemon, options } = await setUp(t, 'daemon-enotconn');
  const helpers = [pidOf(daemon, 'a'), pidOf(daemon, 'b')];
  await daemon.kill('SIGKILL');
  for (const pid of helpers) process.kill(pid, 'SIGKILL');
  for (const pid of helpers) await waitFor(`helper ${pid} to die`, () => !isAlive(pid));
  // isAlive waits for every thread of a helper, so its /dev/fuse fd is closed and the connection aborted by now.
  for (const target of Object.values(targets)) {
    t.ok(isMounted(target), `${target} is still in the mount table`);
    const code = statError(path.join(target, 'data'));
    t.ok(code !== undefined && DEAD_CONNECTION.includes(code), `the mountpoint is dead ("Transport endpoint is not connected"): got ${code}`);
  }
  // An orphaned staging dir from an interrupted create must be cleaned at start-up.
  const orphan = path.join(options.root, 'mounts', `.staging-${'0'.repeat(64)}`);
  fs.mkdirSync(path.join(orphan, 'upper'), { recursive: true });

  const restarted = await startDaemon(t, options);
  for (const [name, target] of Object.entries(targets)) {
    t.equal(statError(path.join(target, 'data')), undefined, `${name} answers again`);
    t.equal(fs.readFileSync(path.join(target, 'data/written'), 'utf8'), `upper data of ${name}\n`, `${name} kept its upper data`);
  }
  t.notOk(fs.existsSync(orphan), 'the orphaned staging dir was removed');
  t.ok(await restarted.waitForLog(/"mount":"a".*detached a leftover mount/), 'the recovery is logged');
  await restarted.kill('SIGTERM');
  t.ok(dir);
});

t.test('one helper crashing does not disturb the other mount, and is restarted', async (t) => {
  const { targets, daemon } = await setUp(t, 'daemon-helper-crash');
  const victim = pidOf(daemon, 'a');
  const bystander = pidOf(daemon, 'b');
  process.kill(victim, 'SIGKILL');
  // Read from b while a is down and restarting.
  t.equal(fs.readFileSync(path.join(targets.b, 'data/written'), 'utf8'), 'upper data of b\n', 'the other mount keeps serving');
  const back = await waitFor('mount a to be restarted', () => {
    const view = daemon.json<MountView[]>(['mount', 'inspect', 'a'])[0];
    return view?.State.Status === 'mounted' && view.State.Pid !== victim ? view : undefined;
  });
  t.equal(back.State.Restarts, 1, 'the restart is counted');
  t.equal(fs.readFileSync(path.join(targets.a, 'data/written'), 'utf8'), 'upper data of a\n', 'the restarted mount has its data');
  t.equal(pidOf(daemon, 'b'), bystander, 'the other helper was never touched');
  t.ok(await daemon.waitForLog(/"mount":"a".*mount helper ended unexpectedly/), 'the crash is logged in the mount\'s logger');
  await daemon.kill('SIGTERM');
});

t.test('kill -9 of a helper while processes write through the mount: the mount lives on and nobody sees an error', async (t) => {
  const { dir, targets, daemon } = await setUp(t, 'daemon-helper-handover');
  const mnt = targets.a;
  const mountIdBefore = mountIdOf(mnt);
  // Three writers: by absolute path, by path relative to a cwd inside the mount, and through one fd held open
  // across every crash (a lower file opened for append: its handle is one the next helper must adopt).
  const script = [
    'set -u; fails=0',
    `exec 9>>${mnt}/data/base`,
    `cd ${mnt}/data`,
    'for i in $(seq 1 600); do',
    `  echo "abs $i" > ${mnt}/abs-$i || fails=$((fails+1))`,
    '  echo "rel $i" > rel-$i || fails=$((fails+1))',
    '  cat rel-$i > /dev/null || fails=$((fails+1))',
    '  echo "held $i" >&9 || fails=$((fails+1))',
    '  mkdir -p dir-$i/sub && echo x > dir-$i/sub/f || fails=$((fails+1))',
    '  sleep 0.002',
    'done',
    'echo "fails=$fails"',
  ].join('\n');
  const writer = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { writer.kill('SIGKILL'); });
  let out = '';
  let err = '';
  writer.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  writer.stderr.on('data', (c: Buffer) => { err += c.toString(); });
  const done = new Promise<number | null>((resolve) => writer.on('exit', (code) => resolve(code)));
  const victims: number[] = [];
  for (let round = 0; round < 3; round++) {
    await new Promise((resolve) => setTimeout(resolve, 400));
    const pid = pidOf(daemon, 'a');
    victims.push(pid);
    process.kill(pid, 'SIGKILL');
    await waitFor(`a new helper for mount a (round ${round})`, () => {
      const view = daemon.json<MountView[]>(['mount', 'inspect', 'a'])[0];
      return view?.State.Status === 'mounted' && !victims.includes(view.State.Pid) ? view : undefined;
    });
  }
  t.equal(await done, 0, 'the writer finished');
  t.equal(out.trim(), 'fails=0', 'no write, read or mkdir failed while helpers were killed');
  t.equal(err, '', 'the writer printed no error');
  t.equal(mountIdOf(mnt), mountIdBefore, 'the very same mount stayed in place (never detached and remounted)');
  const view = daemon.json<MountView[]>(['mount', 'inspect', 'a'])[0];
  t.equal(view?.State.Restarts, 3, 'each take-over is counted as a restart');
  t.equal(fs.readFileSync(path.join(mnt, 'abs-600'), 'utf8'), 'abs 600\n');
  t.equal(fs.readFileSync(path.join(mnt, 'data/rel-600'), 'utf8'), 'rel 600\n');
  const held = fs.readFileSync(path.join(mnt, 'data/base'), 'utf8').split('\n').filter(Boolean);
  t.equal(held.length, 601, 'every write through the held fd landed (base + 600 lines)');
  t.equal(held[600], 'held 600');
  t.ok(await daemon.waitForLog(/"mount":"a".*a new mount helper took over the live mount/), 'the take-over is logged');
  await daemon.kill('SIGTERM');
  // Nothing ever landed in the directory under the mountpoint: the mount was never gone.
  t.same(fs.readdirSync(mnt), [], 'the mountpoint dir itself is empty after unmount');
  t.same(fs.readdirSync(path.join(dir, 'sessions')).filter(Boolean), [], 'no node journal is left behind');
});

t.test('SIGTERM with a shell inside a mount: lazy detach with a warning, exit 0, remounted on next start', async (t) => {
  const { targets, daemon, options } = await setUp(t, 'daemon-sigterm', { helperExitGraceMs: 500 });
  const shell = spawn('bash', ['-c', `cd ${targets.a} && exec sleep 600`], { stdio: 'ignore' });
  t.teardown(() => { shell.kill('SIGKILL'); });
  await waitFor('the shell to enter the mount', () => {
    try { return fs.readlinkSync(`/proc/${shell.pid}/cwd`) === targets.a; } catch { return false; }
  });
  const helper = pidOf(daemon, 'a');
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null }, 'the daemon exits 0');
  t.match(daemon.stderr, /"mount":"a".*detached lazily/, 'the busy mount was detached lazily, with a warning');
  t.notOk(isMounted(targets.a), 'the busy mount is gone from the namespace');
  t.notOk(isMounted(targets.b), 'the idle mount was unmounted');
  t.notOk(isAlive(helper), 'no helper outlives the daemon');
  shell.kill('SIGKILL');

  const restarted = await startDaemon(t, options);
  t.same(restarted.json<MountView[]>(['mount', 'ls']).map((v) => v.State.Status), ['mounted', 'mounted'], 'both mounts come back on the next start');
  t.equal(fs.readFileSync(path.join(targets.a, 'data/written'), 'utf8'), 'upper data of a\n');
  await restarted.kill('SIGTERM');
});
