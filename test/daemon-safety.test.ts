/**
 * Data safety of the store with real processes, real LevelDB and a real tmpfs (issue 7, sections 1 and 2): a full
 * state dir loses nothing that was acknowledged and a failing store refuses changes until it reopens; records and
 * references are written together and rebuilt at start-up; prune never removes a layer a mount record names; fsck
 * reports and repairs.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { isMounted, makeLayer, startDaemon, tempDir } from './helpers/daemon-harness.js';
import { api, editStore, holders, info, ociImage, ok, setUp, target, type FsckJson, type ImageJson, type LayerJson, type MountJson } from './helpers/safety.js';

t.test('disk full on the state dir: the failing change is refused, later acknowledged changes survive a restart', async (t) => {
  const { dir, stateFs, daemon, daemonOptions } = await setUp(t, 'safety-full', { tmpfsMiB: 24 });
  ok(t, daemon, ['image', 'import', ociImage(dir, 'one', { 'etc/one': 'one\n' }), '--name', 'ok:1'], 'import ok:1');

  const filler = path.join(stateFs, 'filler');
  spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M'], { encoding: 'utf8' });
  const full = daemon.cli(['mount', 'create', 'ok:1', '--target', target(dir, 't1'), '--name', 'sm1']);
  t.equal(full.status, 1, 'a create on a full disk fails');
  t.match(full.stderr, /STRATA_STORE_FAILED: .*No space left on device/, 'with a stable code naming the cause');
  t.notOk(isMounted(path.join(dir, 't1')), 'and mounts nothing');
  t.match((await info(daemon)).StoreError, /No space left on device/, 'info says why the store refuses changes');
  t.equal((await api<ImageJson[]>(daemon, 'GET', '/images/json')).length, 1, 'reads still work');
  const refused = daemon.cli(['image', 'import', ociImage(dir, 'refused', { 'etc/r': 'r\n' }), '--name', 'refused:1']);
  t.equal(refused.status, 1, 'while the disk is full every change is refused');

  fs.rmSync(filler);
  const t2 = target(dir, 't2');
  ok(t, daemon, ['mount', 'create', 'ok:1', '--target', t2, '--name', 'sm2'], 'after freeing space a create succeeds');
  fs.writeFileSync(path.join(t2, 'p'), 'precious\n');
  ok(t, daemon, ['image', 'import', ociImage(dir, 'two', { 'etc/two': 'two\n' }), '--name', 'ok:2'], 'and an import');
  t.equal((await info(daemon)).StoreError, null, 'the store reopened cleanly');
  const ok2Layer = (await api<ImageJson>(daemon, 'GET', '/images/ok:2/json')).chainIDs[0]!;
  const ok2Path = (await api<LayerJson>(daemon, 'GET', `/layers/${encodeURIComponent(ok2Layer)}/json`)).path;
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });

  const restarted = await startDaemon(t, daemonOptions);
  const mounts = (await api<MountJson[]>(restarted, 'GET', '/mounts/json'));
  t.same(mounts.map((m) => [m.Name, m.State.Status]), [['sm2', 'mounted']], 'the acknowledged mount is back, the refused one never existed');
  t.equal(fs.readFileSync(path.join(t2, 'p'), 'utf8'), 'precious\n', 'with the user\'s file');
  t.same((await api<ImageJson[]>(restarted, 'GET', '/images/json')).flatMap((i) => i.names).sort(), ['ok:1', 'ok:2'], 'the acknowledged import is back');
  t.ok(fs.existsSync(path.join(ok2Path, 'etc/two')), 'with its layer dir');
  t.same((await info(restarted)).LostAndFound, [], 'nothing needed quarantine');
  t.same(await restarted.kill('SIGTERM'), { code: 0, signal: null });
});

t.test('a write failing between a mount record and its references leaves neither; start-up rebuilds references from the records', async (t) => {
  const faults = path.join(tempDir(t, 'safety-faults'), 'faults');
  const { dir, daemon, daemonOptions } = await setUp(t, 'safety-refs', { env: { STRATA_TEST_FAULTS: faults } });
  ok(t, daemon, ['image', 'import', ociImage(dir, 'img', { 'etc/img': 'img\n' }), '--name', 'img:1'], 'import');
  const image = (await api<ImageJson>(daemon, 'GET', '/images/img:1/json'));
  const layer = image.chainIDs[0]!;

  // The next metadata write fails, as the second of two separate writes would after a crash or a full disk.
  fs.writeFileSync(faults, '0');
  const failed = daemon.cli(['mount', 'create', 'img:1', '--target', target(dir, 'ta'), '--name', 'ghost']);
  t.equal(failed.status, 1, 'the create fails');
  t.match(failed.stderr, /STRATA_STORE_FAILED: .*injected write failure/);
  fs.rmSync(faults);
  t.same((await holders(daemon, layer)), [`image:${image.id}`], 'no reference was left for the failed mount');
  t.same((await api<MountJson[]>(daemon, 'GET', '/mounts/json')), [], 'and no record');
  t.same(fs.readdirSync(path.join(daemonOptions.root, 'mounts')), [], 'and no dir');

  ok(t, daemon, ['mount', 'create', 'img:1', '--target', target(dir, 'tb'), '--name', 'real'], 'a create after the fault');
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });

  // What two separate writes leave after a crash: a reference nothing records, and a record without its reference.
  await editStore(daemonOptions.root, async (store) => {
    await store.batch([
      { type: 'put', sublevel: 'refs', key: `${layer}|mount:vanished`, value: { chainID: layer, holder: 'mount:vanished', since: new Date().toISOString() } },
      { type: 'del', sublevel: 'refs', key: `${layer}|mount:real` },
    ]);
  });
  const restarted = await startDaemon(t, daemonOptions);
  t.same((await holders(restarted, layer)), [`image:${image.id}`, 'mount:real'].sort(), 'start-up rebuilt the references from the records');
  await restarted.waitForLog(/rebuilt layer references from the image and mount records/);
  ok(t, restarted, ['mount', 'rm', 'real'], 'remove the mount');
  ok(t, restarted, ['image', 'rm', 'img:1'], 'remove the image');
  t.same(restarted.json<{ deletedLayers: string[] }>(['layer', 'prune']).deletedLayers, [layer], 'the layer is not held forever by a stray reference');
  t.same(await restarted.kill('SIGTERM'), { code: 0, signal: null });
});

t.test('prune never removes a layer a mount record names; fsck reports and repairs the missing reference', async (t) => {
  const { dir, daemon, daemonOptions } = await setUp(t, 'safety-prune');
  const layout = ociImage(dir, 'app', { 'app/main': 'v1\n' });
  ok(t, daemon, ['image', 'import', layout, '--name', 'app:1'], 'import');
  const layer = (await api<LayerJson[]>(daemon, 'GET', '/layers/json'))[0]!;
  const mnt = target(dir, 'mnt');
  ok(t, daemon, ['mount', 'create', 'app:1', '--target', mnt, '--name', 'app'], 'mount');
  fs.writeFileSync(path.join(mnt, 'mine'), 'mine\n');
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });

  // The layer's content vanishes while the daemon is down: recovery drops its records and references...
  fs.rmSync(layer.path, { recursive: true });
  const restarted = await startDaemon(t, daemonOptions);
  t.same((await api<LayerJson[]>(restarted, 'GET', '/layers/json')), [], 'the layer records were dropped');
  // ...and a re-import brings the layer back, without the mount's reference.
  ok(t, restarted, ['image', 'import', layout, '--name', 'app:1'], 're-import');
  t.same((await holders(restarted, layer.chainID)), [(await api<ImageJson>(restarted, 'GET', '/images/app:1/json')).id].map((id) => `image:${id}`), 'only the image holds a reference now');

  ok(t, restarted, ['image', 'rm', 'app:1'], 'image rm');
  t.same(restarted.json<{ deletedLayers: string[] }>(['layer', 'prune']).deletedLayers, [], 'prune keeps the layer the mount record names');
  const report = restarted.cli(['--json', 'fsck']);
  t.equal(report.status, 1, 'fsck exits 1 while problems remain');
  const found = JSON.parse(report.stdout) as FsckJson;
  t.match(found.Problems, [{ subject: `layer ${layer.chainID}`, problem: 'mount:app uses it but holds no reference', repair: 'add the reference', repaired: false }], 'fsck names the missing reference');
  const rm = restarted.cli(['layer', 'rm', layer.chainID]);
  t.match(rm.stderr, /STRATA_IN_USE: .*mount:app/, 'layer rm refuses, naming the mount');
  ok(t, restarted, ['mount', 'start', 'app'], 'the mount starts again over the re-imported layer');
  t.equal(fs.readFileSync(path.join(mnt, 'app/main'), 'utf8'), 'v1\n', 'with the layer\'s files');
  t.equal(fs.readFileSync(path.join(mnt, 'mine'), 'utf8'), 'mine\n', 'and the user\'s');

  // A content dir nobody records appears while the daemon runs: fsck reports it; --repair moves it aside.
  makeLayer(path.join(daemonOptions.root, 'layers', 'abcdefabcdef'), { stray: 'stray\n' });
  const repaired = JSON.parse(restarted.cli(['--json', 'fsck', '--repair']).stdout) as FsckJson;
  t.equal(repaired.Remaining, 0, 'fsck --repair fixed everything');
  t.ok(repaired.Problems.some((p) => p.problem === 'no layer content record names this dir' && p.repaired), 'including the unrecorded dir');
  t.same((await holders(restarted, layer.chainID)), ['mount:app'], 'the reference is back');
  const clean = restarted.cli(['fsck']);
  t.equal(clean.status, 0, 'a second fsck finds nothing');
  t.match(clean.stdout, /No problems found/);
  const lost = (await info(restarted)).LostAndFound;
  t.match(lost, [{ Kind: 'layer', Name: /^\d{8}T\d{6}Z-layer-abcdefabcdef$/ }], 'the dir is in lost+found');
  t.equal(fs.readFileSync(path.join(lost[0]!.Path, 'stray'), 'utf8'), 'stray\n');
  t.same(await restarted.kill('SIGTERM'), { code: 0, signal: null });
});

