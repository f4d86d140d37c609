/**
 * stratad's mount lifecycle, driven through the real CLI against a real daemon started as the unit starts it:
 * create, ls, inspect, unmount, start, rm (with and without --keep-upper), the errors users hit, and the CLI's
 * exit codes. Mounts are made by the configured helper over plain layer dirs, read and written with real tools.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { isMounted, makeLayer, startDaemon, stagedExecStart, strataCli, tempDir } from './helpers/daemon-harness.js';

interface MountView {
  Id: string;
  Name: string;
  Target: string;
  State: { Status: string; Running: boolean; Pid: number; Error: string };
  GraphDriver: { Data: { LowerDir: string; UpperDir: string; WorkDir: string; MergedDir: string; Options: string } };
}

t.test('mount lifecycle through the CLI', async (t) => {
  const dir = tempDir(t, 'daemon-life');
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const daemon = await startDaemon(t, { root: path.join(dir, 'root'), socket: path.join(dir, 'run/strata.sock'), execStart });

  const top = makeLayer(path.join(dir, 'layers/top'), { 'etc/motd': 'top wins\n', 'bin/tool': 'tool\n' });
  const bottom = makeLayer(path.join(dir, 'layers/bottom'), { 'etc/motd': 'hidden\n', 'etc/base': 'base\n' });
  const target = path.join(dir, 'mnt');
  fs.mkdirSync(target);

  const info = daemon.json<{ Root: string; Mounts: number }>(['info']);
  t.equal(info.Root, daemon.root, 'info names the state dir');
  t.equal(info.Mounts, 0);

  // Relative directory sources are resolved by the CLI (./x), top layer first.
  const created = spawnSync(process.execPath, [strataCli, '--socket', daemon.socket, 'mount', 'create', './layers/top', bottom, '--target', target, '--name', 'web'], { cwd: dir, encoding: 'utf8' });
  t.equal(created.status, 0, `mount create succeeds: ${created.stderr}`);
  t.equal(created.stdout.trim(), 'web', 'create prints the name');
  t.ok(isMounted(target), 'the target is a mount point');
  t.equal(fs.readFileSync(path.join(target, 'etc/motd'), 'utf8'), 'top wins\n', 'the leftmost source is the top layer');
  t.same(spawnSync('ls', [path.join(target, 'etc')], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean), ['base', 'motd'], 'ls sees the merged dir');

  const table = daemon.cli(['mount', 'ls']);
  t.equal(table.status, 0);
  t.match(table.stdout, /^NAME\s+ID\s+STATUS\s+TARGET\s+SOURCES\n/, 'ls prints a table with a header');
  t.match(table.stdout, new RegExp(`web\\s+[0-9a-f]{12}\\s+mounted\\s+${target}\\s+${top},${bottom}`), 'ls shows the mount, its status and sources');

  const [view] = daemon.json<MountView[]>(['mount', 'inspect', 'web']);
  t.ok(view !== undefined);
  t.equal(view!.State.Status, 'mounted');
  t.ok(view!.State.Pid > 0, 'inspect shows the helper pid');
  t.equal(view!.GraphDriver.Data.LowerDir, `${top}:${bottom}`);
  t.equal(view!.GraphDriver.Data.MergedDir, target);
  t.match(view!.GraphDriver.Data.Options, /^redirect_dir=on,index=on,/, 'inspect shows the overlay options in effect');
  t.ok(view!.GraphDriver.Data.UpperDir.startsWith(`${daemon.root}/mounts/${view!.Id}/`), 'the upper lives in the state dir');
  t.same(daemon.json<MountView[]>(['mount', 'inspect', view!.Id.slice(0, 10)])[0]?.Name, 'web', 'an id prefix names the mount');

  // Writes go to the upper; unmount keeps them, start brings them back.
  fs.writeFileSync(path.join(target, 'etc/new'), 'written through the mount\n');
  spawnSync('cp', ['-a', path.join(target, 'bin'), path.join(target, 'bin2')]);
  t.equal(daemon.cli(['mount', 'unmount', 'web']).status, 0, 'unmount succeeds');
  t.notOk(isMounted(target), 'the target is no longer a mount point');
  t.same(fs.readdirSync(target), [], 'the target dir is empty again');
  t.equal(fs.readFileSync(path.join(view!.GraphDriver.Data.UpperDir, 'etc/new'), 'utf8'), 'written through the mount\n', 'the upper kept the write');
  t.equal(daemon.json<MountView[]>(['mount', 'inspect', 'web'])[0]?.State.Status, 'unmounted');
  t.equal(daemon.cli(['mount', 'start', 'web']).status, 0, 'start succeeds');
  t.equal(fs.readFileSync(path.join(target, 'etc/new'), 'utf8'), 'written through the mount\n', 'the write is back after start');
  t.equal(fs.readFileSync(path.join(target, 'bin2/tool'), 'utf8'), 'tool\n', 'cp -a result is back after start');

  // The errors users meet, each with its code, a hint, and exit 1 (usage errors exit 2).
  const target2 = path.join(dir, 'mnt2');
  fs.mkdirSync(target2);
  const dupName = daemon.cli(['mount', 'create', top, '--target', target2, '--name', 'web']);
  t.equal(dupName.status, 1);
  t.match(dupName.stderr, /STRATA_CONFLICT: a mount named "web" already exists/);
  const dupTarget = daemon.cli(['mount', 'create', top, '--target', target]);
  t.equal(dupTarget.status, 1);
  t.match(dupTarget.stderr, /STRATA_CONFLICT: .* already the target of mount "web"/);
  const noDir = daemon.cli(['mount', 'create', path.join(dir, 'nope'), '--target', target2]);
  t.equal(noDir.status, 1);
  t.match(noDir.stderr, /STRATA_BAD_DIR: layer directory ".*nope" does not exist/);
  const noTarget = daemon.cli(['mount', 'create', top, '--target', path.join(dir, 'missing-target')]);
  t.match(noTarget.stderr, /STRATA_BAD_DIR: target ".*missing-target" does not exist \(create it with mkdir -p\)/);
  const badName = daemon.cli(['mount', 'create', top, '--target', target2, '--name', '../evil']);
  t.equal(badName.status, 2, 'an invalid name is a usage error');
  t.match(badName.stderr, /STRATA_BAD_OPTION: mount name "..\/evil" is invalid/);
  const unknownImage = daemon.cli(['mount', 'create', 'busybox:latest', '--target', target2]);
  t.equal(unknownImage.status, 1);
  t.match(unknownImage.stderr, /STRATA_NOT_FOUND: .*busybox:latest/);
  const missingMount = daemon.cli(['mount', 'inspect', 'ghost']);
  t.equal(missingMount.status, 1);
  t.match(missingMount.stderr, /STRATA_NOT_FOUND: no mount named "ghost"/);
  const usage = daemon.cli(['mount', 'create', top]);
  t.equal(usage.status, 2, 'a missing required option exits 2');
  t.match(usage.stderr, /target/);
  t.same(fs.readdirSync(target2), [], 'failed creates left nothing on the target');
  t.equal(daemon.json<MountView[]>(['mount', 'ls']).length, 1, 'failed creates left no records');

  // A busy mount refuses a plain unmount and says what to do.
  const fd = fs.openSync(path.join(target, 'etc/motd'), 'r');
  const busy = daemon.cli(['mount', 'unmount', 'web']);
  t.equal(busy.status, 1);
  t.match(busy.stderr, /STRATA_MOUNT_BUSY: .* is busy: close the files and shells using it .*--force/);
  t.ok(isMounted(target), 'a refused unmount leaves the mount live');
  fs.closeSync(fd);

  // rm deletes the upper; rm --keep-upper moves it under retained/.
  const second = daemon.cli(['mount', 'create', bottom, '--target', target2, '--name', 'scratch']);
  t.equal(second.status, 0, second.stderr);
  fs.writeFileSync(path.join(target2, 'keep-me'), 'precious\n');
  const kept = daemon.json<{ RetainedUpperDir: string }>(['mount', 'rm', 'scratch', '--keep-upper']);
  t.notOk(isMounted(target2));
  t.equal(fs.readFileSync(path.join(kept.RetainedUpperDir, 'keep-me'), 'utf8'), 'precious\n', '--keep-upper keeps the writes');

  const upper = view!.GraphDriver.Data.UpperDir;
  const removed = daemon.cli(['mount', 'rm', 'web']);
  t.equal(removed.status, 0, removed.stderr);
  t.notOk(isMounted(target));
  t.notOk(fs.existsSync(path.dirname(upper)), 'rm deleted the upper and work dirs');
  t.same(fs.readdirSync(path.join(daemon.root, 'mounts')), [], 'no mount dirs are left in the state dir');
  t.equal(daemon.json<unknown[]>(['mount', 'ls']).length, 0);
  t.equal(fs.readFileSync(path.join(top, 'etc/motd'), 'utf8'), 'top wins\n', 'the lower layers are untouched');

  const stopped = await daemon.kill('SIGTERM');
  t.same(stopped, { code: 0, signal: null }, 'SIGTERM ends the daemon with exit 0');
  t.notOk(fs.existsSync(daemon.socket), 'the socket is removed at exit');

  const down = daemon.cli(['mount', 'ls']);
  t.equal(down.status, 1);
  t.match(down.stderr, /STRATA_DAEMON_UNREACHABLE: daemon not running .*: start it with `systemctl start stratad`/);
});

t.test('output piped into a reader that stops early ends quietly (no EPIPE crash)', async (t) => {
  const dir = tempDir(t, 'daemon-epipe');
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const daemon = await startDaemon(t, { root: path.join(dir, 'root'), socket: path.join(dir, 'strata.sock'), execStart });
  // `true` exits without reading: by the time the CLI has the daemon's answer, nobody reads its table.
  const script = `"${process.execPath}" "${strataCli}" --socket "${daemon.socket}" info | true; echo "status=\${PIPESTATUS[0]}"`;
  for (let round = 0; round < 3; round++) {
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
    t.notMatch(r.stderr, /EPIPE|Unhandled 'error' event/, `no crash report (round ${round}): ${r.stderr}`);
    t.match(r.stdout, /status=0/, 'the CLI exits 0 when its reader went away');
  }
  await daemon.kill('SIGTERM');
});
