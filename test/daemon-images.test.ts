/**
 * Mounts over imported layers through the daemon: `strata layer import` goes to the daemon (which holds the store's
 * lock), a mount over a layer chain references its layers, removing a referenced layer fails naming the mount, and
 * the references are dropped with the mount. Uses the daemon's default helper (strata-overlay) unless
 * STRATA_TEST_MOUNT_PROGRAM says otherwise.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { isMounted, makeLayer, startDaemon, stagedExecStart, tempDir } from './helpers/daemon-harness.js';

interface LayerInfo {
  chainID: string;
}

t.test('mounts over imported layers hold references on them', async (t) => {
  const dir = tempDir(t, 'daemon-images');
  const daemon = await startDaemon(t, { root: path.join(dir, 'root'), socket: path.join(dir, 'strata.sock'), execStart: stagedExecStart(path.join(dir, 'install')) });

  const base = makeLayer(path.join(dir, 'src/base'), { 'etc/os-release': 'base\n', 'bin/sh-like': 'shell\n' });
  const app = makeLayer(path.join(dir, 'src/app'), { 'app/main': 'app v1\n', 'etc/os-release': 'app\n' });
  spawnSync('tar', ['-C', base, '-cf', path.join(dir, 'base.tar'), '.']);
  spawnSync('tar', ['-C', app, '-cf', path.join(dir, 'app.tar'), '.']);
  const bottom = daemon.json<LayerInfo>(['layer', 'import', path.join(dir, 'base.tar')]);
  const top = daemon.json<LayerInfo>(['layer', 'import', path.join(dir, 'app.tar'), '--parent', bottom.chainID]);
  t.match(top.chainID, /^sha256:[0-9a-f]{64}$/, 'the layer was imported through the daemon');
  t.equal(daemon.json<LayerInfo[]>(['layer', 'ls']).length, 2);

  const target = path.join(dir, 'mnt');
  fs.mkdirSync(target);
  const created = daemon.cli(['mount', 'create', top.chainID, '--target', target, '--name', 'app']);
  t.equal(created.status, 0, created.stderr);
  t.ok(isMounted(target));
  t.equal(fs.readFileSync(path.join(target, 'app/main'), 'utf8'), 'app v1\n');
  t.equal(fs.readFileSync(path.join(target, 'etc/os-release'), 'utf8'), 'app\n', 'the top layer of the chain wins');
  t.equal(fs.readFileSync(path.join(target, 'bin/sh-like'), 'utf8'), 'shell\n', 'the parent layer is stacked below');
  const view = daemon.json<{ Sources: { kind: string; layerIds: string[] }[] }[]>(['mount', 'inspect', 'app'])[0];
  t.same(view?.Sources[0]?.layerIds.length, 2, 'the mount references both layers of the chain');

  const refused = daemon.cli(['layer', 'rm', bottom.chainID]);
  t.equal(refused.status, 1, 'a layer used by a mount cannot be removed');
  t.match(refused.stderr, /STRATA_IN_USE.*mount:app/, 'and the error names the mount');

  t.equal(daemon.cli(['mount', 'rm', 'app']).status, 0);
  const removed = daemon.cli(['layer', 'rm', top.chainID]);
  t.equal(removed.status, 0, `after the mount is gone the layer can be removed: ${removed.stderr}`);
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });
});
