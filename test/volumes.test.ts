/**
 * Volumes, binds and tmpfs mounts attached to union mounts, through the real CLI against a real daemon: where
 * written bytes land, ro (EROFS), nocopy and the copy of image content into a new volume, a tmpfs size limit
 * (ENOSPC), escape attempts through `..` and symlinks, a volume changed behind Strata's back, in-use protection,
 * survival across unmount/start, helper kill, daemon restart and mount rm; then the volume commands: names,
 * labels, filters, prune rules, a device-backed (tmpfs) local volume, refs rebuilt at restart.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { makeLayer, mountPoints, rawRequest, startDaemon, stagedExecStart, tempDir, waitFor, type DaemonHandle, type Teardown } from './helpers/daemon-harness.js';

interface AttachmentView { Type: string; Name?: string; Source: string; Destination: string; Mode: string; RW: boolean }
interface MountView { Name: string; Id: string; State: { Status: string; Pid: number; Restarts: number }; GraphDriver: { Data: { UpperDir: string } }; Mounts: AttachmentView[] }
interface VolumeView { Name: string; Mountpoint: string; Labels: Record<string, string>; Options: Record<string, string>; UsedBy: string[]; UsageData: { Size: number; RefCount: number } }

function errorCode(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

/** Mount points strictly under `dir`, from this process's mountinfo. */
const submounts = (dir: string) => mountPoints().filter((m) => m.startsWith(`${dir}/`));
const fsTypeAt = (where: string) => spawnSync('findmnt', ['-n', '-o', 'FSTYPE', '--mountpoint', where], { encoding: 'utf8' }).stdout.trim();

function ok(t: Test, daemon: DaemonHandle, args: string[]): string {
  const r = daemon.cli(args);
  t.equal(r.status, 0, `strata ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/**
 * The control API directly, for set-up steps and checks whose CLI side another step already covers: each CLI
 * call is a Node start, which a loaded machine makes slow.
 */
async function api<T>(daemon: DaemonHandle, method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: T }> {
  const r = await rawRequest(daemon.socket, method, urlPath, body === undefined ? undefined : JSON.stringify(body), body === undefined ? {} : { 'content-type': 'application/json' });
  return { status: r.status, body: (r.type.includes('json') ? JSON.parse(r.body) : r.body) as T };
}

async function setUp(t: Teardown, label: string) {
  const dir = tempDir(t, label);
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const options = { root: path.join(dir, 'root'), socket: path.join(dir, 'strata.sock'), execStart };
  const daemon = await startDaemon(t, options);
  return { dir, daemon, options };
}

t.test('volumes, binds and tmpfs through a union mount', async (t) => {
  const { dir, daemon, options } = await setUp(t, 'volumes-attach');
  const lower = makeLayer(path.join(dir, 'lower'), {
    'data/seed': 'from the image\n',
    'nc/image-file': 'image only\n',
    'etc/hostname': 'container\n',
  });
  // Escape attempts built into the image: a relative symlink climbing far above the root, an absolute one.
  fs.symlinkSync('../../../../../../../../tmp/strata-volumes-escape', path.join(lower, 'climb'));
  fs.symlinkSync('/outside', path.join(lower, 'abs'));
  fs.copyFileSync('/bin/busybox', path.join(lower, 'busybox'));
  fs.chmodSync(path.join(lower, 'busybox'), 0o755);
  const host = path.join(dir, 'host');
  fs.mkdirSync(host);
  fs.writeFileSync(path.join(host, 'from-host'), 'host file\n');
  const target = path.join(dir, 'mnt');
  fs.mkdirSync(target);

  ok(t, daemon, ['volume', 'create', 'data', '--label', 'app=web']);
  const created = daemon.cli(['mount', 'create', lower, '--target', target, '--name', 'web',
    '--volume', 'data:/data', '--volume', 'cfg:/etc/cfg:ro', '--volume', 'nc:/nc:nocopy',
    '--bind', `${host}:/srv/host`, '--bind', `${host}:/srv/host-ro:ro`,
    '--tmpfs', '/scratch:size=1m,mode=1777',
    '--tmpfs', '/climb/t', '--volume', 'esc:/abs/sub', '--volume', 'dots:/../../../dots']);
  t.equal(created.status, 0, `mount create with attachments: ${created.stderr}`);
  const [view] = daemon.json<MountView[]>(['mount', 'inspect', 'web']);
  const upper = view!.GraphDriver.Data.UpperDir;
  const volumeDir = (name: string) => path.join(daemon.root, 'volumes', name, '_data');

  t.test('mount inspect lists each attachment with type, source, destination and mode', async (t) => {
    const byDest = new Map(view!.Mounts.map((m) => [m.Destination, m]));
    t.match(byDest.get('/data'), { Type: 'volume', Name: 'data', Source: volumeDir('data'), Mode: 'rw', RW: true });
    t.match(byDest.get('/etc/cfg'), { Type: 'volume', Name: 'cfg', Mode: 'ro', RW: false });
    t.match(byDest.get('/nc'), { Type: 'volume', Mode: 'rw,nocopy' });
    t.match(byDest.get('/srv/host'), { Type: 'bind', Source: fs.realpathSync(host), Mode: 'rw' });
    t.match(byDest.get('/srv/host-ro'), { Type: 'bind', Mode: 'ro', RW: false });
    t.match(byDest.get('/scratch'), { Type: 'tmpfs', Source: 'tmpfs', Mode: 'rw,size=1048576,mode=1777' });
    t.ok(byDest.has('/dots'), '`..` above the root is cleaned lexically: /../../../dots is /dots');
  });

  t.test('bytes land in the volume, the host dir and the tmpfs, never in the upper', async (t) => {
    fs.writeFileSync(path.join(target, 'data/new'), 'volume bytes\n');
    t.equal(fs.readFileSync(path.join(volumeDir('data'), 'new'), 'utf8'), 'volume bytes\n', 'a write under /data is in the volume');
    fs.writeFileSync(path.join(target, 'srv/host/new'), 'bind bytes\n');
    t.equal(fs.readFileSync(path.join(host, 'new'), 'utf8'), 'bind bytes\n', 'a write under the bind is in the host dir');
    fs.writeFileSync(path.join(target, 'scratch/new'), 'tmpfs bytes\n');
    t.equal(fsTypeAt(path.join(target, 'scratch')), 'tmpfs', '/scratch is a real tmpfs');
    t.equal(fs.readFileSync(path.join(target, 'scratch/new'), 'utf8'), 'tmpfs bytes\n');
    // Rewriting a file the image gave the volume changes the volume's copy, not the lower or the upper.
    fs.appendFileSync(path.join(target, 'data/seed'), 'appended\n');
    t.equal(fs.readFileSync(path.join(volumeDir('data'), 'seed'), 'utf8'), 'from the image\nappended\n');
    t.equal(fs.readFileSync(path.join(lower, 'data/seed'), 'utf8'), 'from the image\n', 'the lower is untouched');
    const upperFiles = spawnSync('find', [upper, '-type', 'f'], { encoding: 'utf8' }).stdout.trim();
    t.equal(upperFiles, '', 'the upper holds no file at all: only the mountpoint dirs created for missing destinations');
    for (const made of ['srv/host', 'srv/host-ro', 'scratch', 'etc/cfg', 'dots']) t.ok(fs.statSync(path.join(upper, made)).isDirectory(), `the missing destination /${made} was created in the upper`);
    t.notOk(fs.existsSync(path.join(upper, 'data')), 'an existing destination is not copied up');
  });

  t.test('a new empty volume gets the image content unless nocopy', async (t) => {
    t.equal(fs.readFileSync(path.join(volumeDir('data'), 'seed'), 'utf8').split('\n')[0], 'from the image');
    t.same(fs.readdirSync(volumeDir('nc')), [], 'nocopy: the volume stays empty');
    t.same(fs.readdirSync(path.join(target, 'nc')), [], 'nocopy: the image content is hidden under the volume');
  });

  t.test('ro gives EROFS', async (t) => {
    t.equal(errorCode(() => fs.writeFileSync(path.join(target, 'etc/cfg/x'), 'no')), 'EROFS', 'ro volume');
    t.equal(errorCode(() => fs.writeFileSync(path.join(target, 'srv/host-ro/x'), 'no')), 'EROFS', 'ro bind');
    t.equal(fs.readFileSync(path.join(target, 'srv/host-ro/from-host'), 'utf8'), 'host file\n', 'a ro bind still reads');
    t.equal(errorCode(() => fs.mkdirSync(path.join(target, 'etc/cfg/d'))), 'EROFS');
  });

  t.test('a tmpfs size limit gives ENOSPC', async (t) => {
    t.equal(errorCode(() => fs.writeFileSync(path.join(target, 'scratch/big'), Buffer.alloc(2 * 1024 * 1024, 1))), 'ENOSPC');
    fs.rmSync(path.join(target, 'scratch/big'), { force: true });
  });

  t.test('escapes resolve inside the root', async (t) => {
    t.notOk(fs.existsSync('/tmp/strata-volumes-escape'), 'the climbing symlink did not reach the host /tmp');
    t.notOk(fs.existsSync('/outside'), 'the absolute symlink did not reach the host /');
    const mounted = submounts(target);
    t.ok(mounted.includes(path.join(target, 'tmp/strata-volumes-escape/t')), 'the tmpfs behind ../../… landed inside the root');
    t.ok(mounted.includes(path.join(target, 'outside/sub')), 'the volume behind /abs landed at <root>/outside');
    t.ok(mounted.includes(path.join(target, 'dots')));
    t.ok(mounted.every((m) => m.startsWith(`${target}/`)), 'every attachment is inside the mount');
    // `..` from a volume's root leads to the union mount, not to the volume's parent in the state dir.
    t.ok(fs.readdirSync(path.join(target, 'data/..')).includes('etc'), 'data/.. is the merged root');
    // A symlink inside a volume pointing at an absolute path resolves in the container's root for a chrooted process.
    fs.symlinkSync('/etc/hostname', path.join(target, 'data/link'));
    const chrooted = spawnSync('chroot', [target, '/busybox', 'cat', '/data/link'], { encoding: 'utf8' });
    t.equal(chrooted.stdout, 'container\n', `a chrooted process sees the container's file: ${chrooted.stderr}`);
    fs.mkdirSync(path.join(dir, 'mnt-x'));
    const denied = daemon.cli(['mount', 'create', lower, '--target', path.join(dir, 'mnt-x'), '--volume', 'v:/']);
    t.match(denied.stderr, /STRATA_BAD_OPTION: mount destination "\/" is the root of the mount/);
  });

  t.test('a process other than Strata changing _data is served as it is', async (t) => {
    fs.writeFileSync(path.join(volumeDir('data'), 'outside-write'), 'written directly\n');
    t.equal(fs.readFileSync(path.join(target, 'data/outside-write'), 'utf8'), 'written directly\n', 'a new file appears');
    fs.writeFileSync(path.join(volumeDir('data'), 'new'), 'rewritten directly, longer than before\n');
    t.equal(fs.readFileSync(path.join(target, 'data/new'), 'utf8'), 'rewritten directly, longer than before\n', 'a changed file reads new');
    fs.rmSync(path.join(volumeDir('data'), 'outside-write'));
    t.equal(errorCode(() => fs.statSync(path.join(target, 'data/outside-write'))), 'ENOENT', 'a deleted file is gone');
    fs.mkdirSync(path.join(volumeDir('data'), 'dir/sub'), { recursive: true });
    fs.renameSync(path.join(volumeDir('data'), 'new'), path.join(volumeDir('data'), 'dir/sub/moved'));
    t.equal(fs.readFileSync(path.join(target, 'data/dir/sub/moved'), 'utf8'), 'rewritten directly, longer than before\n', 'a rename shows');
    const listing = spawnSync('ls', ['-A', path.join(target, 'data')], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).sort();
    t.same(listing, ['dir', 'link', 'seed'], 'ls sees exactly the dir as it is on disk');
  });

  t.test('a volume in use cannot be removed', async (t) => {
    const refused = daemon.cli(['volume', 'rm', 'data']);
    t.equal(refused.status, 1);
    t.match(refused.stderr, /STRATA_IN_USE: volume "data" is in use by mount "web"/);
    t.same(daemon.json<VolumeView[]>(['volume', 'inspect', 'data'])[0]?.UsedBy, ['web']);
  });

  t.test('unmount takes the attachments down first; start puts them back; tmpfs starts empty', async (t) => {
    ok(t, daemon, ['mount', 'unmount', 'web']);
    t.same(submounts(target), [], 'nothing is left mounted under the target');
    t.same(fs.readdirSync(target), [], 'the target is empty');
    t.same(fs.readdirSync(path.join(daemon.root, 'tmpfs')), [], 'the tmpfs backings are gone');
    ok(t, daemon, ['mount', 'start', 'web']);
    t.equal(fs.readFileSync(path.join(target, 'data/seed'), 'utf8'), 'from the image\nappended\n', 'the volume is back');
    t.equal(fs.readFileSync(path.join(target, 'srv/host/new'), 'utf8'), 'bind bytes\n', 'the bind is back');
    t.same(fs.readdirSync(path.join(target, 'scratch')), [], 'the tmpfs is new and empty');
    t.equal(errorCode(() => fs.writeFileSync(path.join(target, 'etc/cfg/x'), 'no')), 'EROFS', 'ro again');
  });

  t.test('a busy attachment refuses a plain unmount and the mount stays whole', async (t) => {
    const fd = fs.openSync(path.join(target, 'data/seed'), 'r');
    const busy = daemon.cli(['mount', 'unmount', 'web']);
    fs.closeSync(fd);
    t.equal(busy.status, 1);
    t.match(busy.stderr, /STRATA_MOUNT_BUSY/);
    t.ok(submounts(target).includes(path.join(target, 'data')), 'the volume is still attached');
    t.ok(submounts(target).includes(path.join(target, 'scratch')), 'so is the tmpfs');
  });

  t.test('a killed helper is restarted with its attachments; tmpfs contents survive it', async (t) => {
    fs.writeFileSync(path.join(target, 'scratch/keep'), 'tmpfs survives helper restarts\n');
    const before = daemon.json<MountView[]>(['mount', 'inspect', 'web'])[0]!;
    process.kill(before.State.Pid, 'SIGKILL');
    await waitFor('the helper restarted', () => {
      const now = daemon.json<MountView[]>(['mount', 'inspect', 'web'])[0]!;
      return now.State.Status === 'mounted' && now.State.Pid !== before.State.Pid;
    });
    t.equal(fs.readFileSync(path.join(target, 'scratch/keep'), 'utf8'), 'tmpfs survives helper restarts\n');
    t.equal(fs.readFileSync(path.join(target, 'data/seed'), 'utf8'), 'from the image\nappended\n');
    t.equal(fs.readFileSync(path.join(target, 'etc/hostname'), 'utf8'), 'container\n', 'the union is served again');
  });

  t.test('a daemon restart re-attaches everything and keeps the refs', async (t) => {
    const attached = submounts(target).sort();
    // kill -9 leaves the helper serving with every attachment on top; the next daemon detaches that whole tree.
    t.same(await daemon.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });
    const afterCrash = await startDaemon(t, options);
    t.same(submounts(target).sort(), attached, 'after kill -9 and restart, each attachment is mounted once, as before');
    t.equal(fs.readFileSync(path.join(target, 'scratch/keep'), 'utf8'), 'tmpfs survives helper restarts\n', 'the tmpfs kept its contents across kill -9');
    t.equal(fs.readFileSync(path.join(target, 'data/seed'), 'utf8'), 'from the image\nappended\n');

    t.same(await afterCrash.kill('SIGTERM'), { code: 0, signal: null });
    t.same(submounts(target), [], 'shutdown left nothing under the target');
    const again = await startDaemon(t, options);
    t.equal(fs.readFileSync(path.join(target, 'data/seed'), 'utf8'), 'from the image\nappended\n');
    t.equal(fs.readFileSync(path.join(target, 'scratch/keep'), 'utf8'), 'tmpfs survives helper restarts\n', 'the tmpfs kept its contents across a daemon restart');
    t.equal(errorCode(() => fs.writeFileSync(path.join(target, 'srv/host-ro/x'), 'no')), 'EROFS');
    t.match(again.cli(['volume', 'rm', 'data']).stderr, /STRATA_IN_USE: .*"web"/, 'refs were rebuilt from LevelDB');

    const removed = again.cli(['mount', 'rm', 'web']);
    t.equal(removed.status, 0, removed.stderr);
    t.same(submounts(target), [], 'mount rm leaves no submount');
    t.same(submounts(again.root), [], 'nor a tmpfs in the state dir');
    t.equal(fs.readFileSync(path.join(volumeDir('data'), 'seed'), 'utf8'), 'from the image\nappended\n', 'volume data survives mount rm');
    t.equal(fs.readFileSync(path.join(host, 'new'), 'utf8'), 'bind bytes\n', 'bind data survives mount rm');
    t.same(again.json<VolumeView[]>(['volume', 'inspect', 'data'])[0]?.UsedBy, [], 'the volume is released');
    t.same(await again.kill('SIGTERM'), { code: 0, signal: null });
    const third = await startDaemon(t, options);
    t.equal(fs.readFileSync(path.join(volumeDir('data'), 'seed'), 'utf8'), 'from the image\nappended\n', 'volume data survives a daemon restart');
    ok(t, third, ['volume', 'rm', 'data']);
    t.notOk(fs.existsSync(path.join(third.root, 'volumes/data')), 'rm deletes the volume dir');
  });
});

t.test('volume commands: names, labels, filters, prune, device volumes', async (t) => {
  const { dir, daemon, options } = await setUp(t, 'volumes-cmds');
  t.equal(fs.statSync(path.join(daemon.root, 'volumes')).mode & 0o777, 0o700, '<root>/volumes is 0700');

  const refused = daemon.cli(['volume', 'create', '../x']);
  t.equal(refused.status, 2, 'a path is refused as a usage error');
  t.match(refused.stderr, /STRATA_BAD_OPTION: volume name "..\/x" is invalid/);
  for (const name of ['a', '.hidden', 'x/y', 'x:y', '..']) {
    const r = await api<{ code: string }>(daemon, 'POST', '/volumes/create', { Name: name });
    t.same([r.status, r.body.code], [400, 'STRATA_BAD_OPTION'], `"${name}" is refused`);
  }
  t.match(daemon.cli(['volume', 'create', 'v1', '--opt', 'colour=blue']).stderr, /STRATA_BAD_OPTION: the local driver has no option "colour"/);

  ok(t, daemon, ['volume', 'create', 'prod-db', '--label', 'env=prod', '--label', 'tier=db']);
  t.equal((await api(daemon, 'POST', '/volumes/create', { Name: 'dev-db', Labels: { env: 'dev', tier: 'db' } })).status, 201);
  t.equal((await api(daemon, 'POST', '/volumes/create', { Name: 'plain' })).status, 201);
  const anon = ok(t, daemon, ['volume', 'create']).trim();
  t.match(anon, /^[0-9a-f]{64}$/, 'an anonymous volume gets a generated id');
  const anonUsed = (await api<{ Name: string }>(daemon, 'POST', '/volumes/create', { Labels: { env: 'prod' } })).body.Name;
  t.equal(ok(t, daemon, ['volume', 'create', 'plain']).trim(), 'plain', 'creating an existing name returns it');

  const names = (args: string[]) => ok(t, daemon, ['volume', 'ls', '-q', ...args]).split('\n').filter(Boolean).sort();
  t.same(names(['--filter', 'label=env=prod']), [anonUsed, 'prod-db'].sort(), 'label=k=v');
  const viaApi = async (filters: Record<string, string[]>) => (await api<{ Volumes: VolumeView[] }>(daemon, 'GET', `/volumes?filters=${encodeURIComponent(JSON.stringify(filters))}`)).body.Volumes.map((v) => v.Name).sort();
  t.same(await viaApi({ label: ['tier'] }), ['dev-db', 'prod-db'], 'label=k');
  t.same(names(['--filter', 'label=tier', '--filter', 'label=env=dev']), ['dev-db'], 'label filters all apply');
  t.same(names(['--filter', 'name=-db']), ['dev-db', 'prod-db'], 'name matches a part'); // not "db": hex ids contain it
  t.match(daemon.cli(['volume', 'ls', '--filter', 'colour=red']).stderr, /STRATA_BAD_OPTION: unknown volume filter "colour"/);

  // One anonymous and one named volume in use by a mount.
  const lower = makeLayer(path.join(dir, 'lower'), { 'f': 'x\n' });
  const target = path.join(dir, 'mnt');
  fs.mkdirSync(target);
  ok(t, daemon, ['mount', 'create', lower, '--target', target, '--name', 'user', '--volume', `${anonUsed}:/a`, '--volume', 'dev-db:/db']);
  t.same(await viaApi({ dangling: ['false'] }), [anonUsed, 'dev-db'].sort(), 'dangling=false: in use');
  t.same(names(['--filter', 'dangling=true']), [anon, 'plain', 'prod-db'].sort(), 'dangling=true: unused');

  const pruned = daemon.json<{ VolumesDeleted: string[] }>(['volume', 'prune']);
  t.same(pruned.VolumesDeleted, [anon], 'prune removes only unused anonymous volumes');
  const byLabel = daemon.json<{ VolumesDeleted: string[] }>(['volume', 'prune', '--all', '--filter', 'label=env=prod']);
  t.same(byLabel.VolumesDeleted, ['prod-db'], 'prune --all with a label filter: unused named volumes with the label');
  const negated = await api<{ VolumesDeleted: string[] }>(daemon, 'POST', `/volumes/prune?filters=${encodeURIComponent(JSON.stringify({ all: ['true'], 'label!': ['keep'] }))}`);
  t.same(negated.body.VolumesDeleted, ['plain'], 'label! excludes; in-use volumes are never pruned');
  t.same(await viaApi({}), [anonUsed, 'dev-db'].sort());

  // A local volume that is a real tmpfs (--opt type=tmpfs,device=tmpfs,o=size=…), as docker volume create --opt.
  ok(t, daemon, ['volume', 'create', 'small', '--opt', 'type=tmpfs,device=tmpfs,o=size=512k']);
  t.same((await api<VolumeView>(daemon, 'GET', '/volumes/small')).body.Options, { type: 'tmpfs', device: 'tmpfs', o: 'size=512k' });
  const target2 = path.join(dir, 'mnt2');
  fs.mkdirSync(target2);
  ok(t, daemon, ['mount', 'create', lower, '--target', target2, '--name', 'dev', '--volume', 'small:/small']);
  const data = path.join(daemon.root, 'volumes/small/_data');
  t.equal(fsTypeAt(data), 'tmpfs', 'the volume device is mounted on _data while in use');
  t.equal(errorCode(() => fs.writeFileSync(path.join(target2, 'small/big'), Buffer.alloc(1024 * 1024, 1))), 'ENOSPC', 'its size limit holds');
  fs.rmSync(path.join(target2, 'small/big'), { force: true });
  fs.writeFileSync(path.join(target2, 'small/f'), 'y'.repeat(1000));
  t.ok(daemon.json<VolumeView[]>(['volume', 'inspect', '--size', 'small'])[0]!.UsageData.Size >= 1000, 'inspect --size measures the data');
  // A second mount shares the volume: one device, the same files; it stays mounted until the last user goes.
  const target3 = path.join(dir, 'mnt3');
  fs.mkdirSync(target3);
  ok(t, daemon, ['mount', 'create', lower, '--target', target3, '--name', 'dev2', '--volume', 'small:/shared']);
  t.equal(mountPoints().filter((m) => m === data).length, 1, 'the device is mounted once on _data');
  t.equal(fs.readFileSync(path.join(target3, 'shared/f'), 'utf8'), 'y'.repeat(1000), 'the second mount sees the first one\'s file');
  ok(t, daemon, ['mount', 'rm', 'dev']);
  t.equal(fsTypeAt(data), 'tmpfs', 'still mounted while dev2 uses it');
  t.equal(fs.readFileSync(path.join(target3, 'shared/f'), 'utf8'), 'y'.repeat(1000));
  ok(t, daemon, ['mount', 'rm', 'dev2']);
  t.equal(fsTypeAt(data), '', 'the device is unmounted when the last mount releases it');

  // A bind to a missing host path is an error, not a new dir.
  const missing = path.join(dir, 'no-such-dir');
  const bad = daemon.cli(['mount', 'create', lower, '--target', target2, '--bind', `${missing}:/x`]);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /STRATA_BAD_DIR: bind source .*no-such-dir does not exist/);
  t.notOk(fs.existsSync(missing));
  fs.mkdirSync(path.join(target2, 'inside'));
  t.match(daemon.cli(['mount', 'create', lower, '--target', target2, '--bind', `${target2}/inside:/x`]).stderr, /STRATA_BAD_OPTION: bind source .* is inside the mount's target/);
  fs.rmdirSync(path.join(target2, 'inside'));
  t.same(submounts(target2), [], 'the failed create left nothing mounted');
  // A destination that is a file in the image fails at attach time, after the tmpfs before it was mounted.
  const late = daemon.cli(['mount', 'create', lower, '--target', target2, '--name', 'late', '--tmpfs', '/t', '--volume', 'late-vol:/f/x']);
  t.equal(late.status, 2);
  t.match(late.stderr, /STRATA_BAD_OPTION: mount destination "\/f\/x": \/f is not a directory in the mount/);
  t.same(submounts(target2), [], 'the rolled-back create left nothing mounted on the target');
  t.same(submounts(daemon.root), [], 'nor a tmpfs in the state dir');
  t.equal((await api(daemon, 'GET', '/mounts/late/json')).status, 404, 'nor a record');
  t.equal((await api(daemon, 'DELETE', '/volumes/late-vol')).status, 200);

  // Refs survive a daemon restart; a crash-orphaned staging dir is cleaned.
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });
  fs.mkdirSync(path.join(options.root, 'volumes/.staging-junk-0123abcd/_data'), { recursive: true });
  makeLayer(path.join(options.root, 'volumes/unrecorded/_data'), { 'precious': 'only copy\n' });
  const again = await startDaemon(t, options);
  t.notOk(fs.existsSync(path.join(options.root, 'volumes/.staging-junk-0123abcd')), 'an interrupted creation is removed at start-up');
  const lost = fs.readdirSync(path.join(options.root, 'lost+found')).filter((e) => e.endsWith('-volume-unrecorded'));
  t.equal(lost.length, 1, 'a volume dir without a record goes to lost+found');
  t.equal(fs.readFileSync(path.join(options.root, 'lost+found', lost[0]!, '_data/precious'), 'utf8'), 'only copy\n', 'with its data');
  t.match(again.cli(['volume', 'rm', 'dev-db']).stderr, /STRATA_IN_USE: volume "dev-db" is in use by mount "user"/);

  // fsck: a volume whose data dir vanished, a dir no record names, a reference whose mount is gone.
  t.equal((await api(again, 'POST', '/volumes/create', { Name: 'vanished' })).status, 201);
  fs.rmSync(path.join(again.root, 'volumes/vanished'), { recursive: true });
  makeLayer(path.join(again.root, 'volumes/stray/_data'), { 'x': 'x\n' });
  const check = again.cli(['fsck']);
  t.equal(check.status, 1, 'fsck exits 1 while problems remain');
  t.match(check.stdout, /volume vanished.*data dir .* is missing/);
  t.match(check.stdout, /volumes\/stray.*no volume record names this dir/);
  const repaired = again.cli(['fsck', '--repair']);
  t.match(repaired.stdout, /volume vanished/, 'a missing data dir needs a user');
  t.notOk(fs.existsSync(path.join(again.root, 'volumes/stray')), '--repair moved the stray dir away');
  t.ok(fs.readdirSync(path.join(again.root, 'lost+found')).some((e) => e.endsWith('-volume-stray')), 'to lost+found');
  ok(t, again, ['volume', 'rm', 'vanished']);
  t.equal(again.cli(['fsck']).status, 0, `fsck is clean again: ${again.cli(['fsck']).stdout}`);
  ok(t, again, ['mount', 'rm', 'user']);
  t.same(again.json<{ VolumesDeleted: string[] }>(['volume', 'prune']).VolumesDeleted, [anonUsed], 'released anonymous volumes are pruned');
  ok(t, again, ['volume', 'rm', 'dev-db', 'small']);
  t.equal(again.cli(['volume', 'rm', '-f', 'ghost']).status, 0, 'rm -f of a missing volume is no error');
  t.match(again.cli(['volume', 'rm', 'ghost']).stderr, /STRATA_NOT_FOUND: no volume named "ghost"/);
  t.same(fs.readdirSync(path.join(again.root, 'volumes')), [], 'no volume dirs are left');
});
