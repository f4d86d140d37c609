/**
 * What the store keeps that no record describes (issue 7, sections 1 and 6): start-up moves unrecorded mount and
 * layer dirs to lost+found instead of deleting them; uppers kept by `mount rm --keep-upper` are listed; both go
 * only through `strata system prune`. Also: a moved tag shows the image id a mount really uses, and an unreadable
 * store is reported as such, not as locked.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { makeLayer, startDaemon, strataCli, tempDir } from './helpers/daemon-harness.js';
import { api, editStore, info, ociImage, ok, setUp, target, type ImageJson, type MountJson } from './helpers/safety.js';

t.test('start-up moves unrecorded mount and layer dirs to lost+found; only system prune --lost deletes them', async (t) => {
  const { dir, daemon, daemonOptions } = await setUp(t, 'safety-lost');
  const lower = makeLayer(path.join(dir, 'lower'), { base: 'base\n' });
  const mnt = target(dir, 'mnt');
  ok(t, daemon, ['mount', 'create', lower, '--target', mnt, '--name', 'm'], 'create');
  fs.writeFileSync(path.join(mnt, 'precious'), 'precious\n');
  const id = (await api<MountJson>(daemon, 'GET', '/mounts/m/json')).Id;
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });

  // The record is lost (a damaged log), and a layer dir has no record either.
  await editStore(daemonOptions.root, (store) => store.batch([{ type: 'del', sublevel: 'mounts', key: id }]));
  // With no daemon running, fsck works on the state dir itself, and without --repair changes nothing.
  const offline = spawnSync(process.execPath, [strataCli, '--root', daemonOptions.root, '--socket', daemonOptions.socket, '--json', 'fsck'], { encoding: 'utf8' });
  t.equal(offline.status, 1, `fsck without a daemon exits 1 on a problem: ${offline.stderr}`);
  t.match(JSON.parse(offline.stdout), { Problems: [{ subject: path.join(daemonOptions.root, 'mounts', id), problem: 'no mount record names this dir', repaired: false }] }, 'and names the unrecorded mount dir');
  t.ok(fs.existsSync(path.join(daemonOptions.root, 'mounts', id, 'upper/precious')), 'which it left in place');
  makeLayer(path.join(daemonOptions.root, 'layers', '0123456789ab'), { f: 'f\n' });
  const restarted = await startDaemon(t, daemonOptions);
  await restarted.waitForLog(/moved a mount dir without a record to lost\+found/);
  await restarted.waitForLog(/2 dir\(s\) without a record are kept in/);
  const reported = await info(restarted);
  t.same(reported.LostAndFound.map((e) => e.Kind).sort(), ['layer', 'mount'], 'info lists both');
  const mountEntry = reported.LostAndFound.find((e) => e.Kind === 'mount')!;
  t.match(mountEntry.Name, new RegExp(`^\\d{8}T\\d{6}Z-mount-${id.slice(0, 12)}$`));
  t.equal(fs.readFileSync(path.join(mountEntry.Path, 'upper/precious'), 'utf8'), 'precious\n', 'the user\'s file is kept');
  t.match(ok(t, restarted, ['info'], 'info as a table'), /Lost\+found: [^\n]*\n(.*\n)*.*-mount-/);

  t.equal(restarted.cli(['system', 'prune']).status, 2, 'prune without --lost or --retained is a usage error');
  const pruned = restarted.json<{ DeletedLost: string[] }>(['system', 'prune', '--lost']);
  t.same(pruned.DeletedLost.length, 2, 'system prune --lost deletes them');
  t.same((await info(restarted)).LostAndFound, []);
  t.same(fs.readdirSync(path.join(daemonOptions.root, 'lost+found')), []);
  t.same(await restarted.kill('SIGTERM'), { code: 0, signal: null });
});

t.test('retained uppers are listed by info and removed by system prune --retained; a moved tag shows the image id', async (t) => {
  const { dir, daemon } = await setUp(t, 'safety-retained');
  ok(t, daemon, ['image', 'import', ociImage(dir, 'v1', { version: '1\n' }), '--name', 'tagged:latest'], 'import v1');
  const v1 = (await api<ImageJson>(daemon, 'GET', '/images/tagged:latest/json')).id;
  const mnt = target(dir, 'mnt');
  ok(t, daemon, ['mount', 'create', 'tagged:latest', '--target', mnt, '--name', 'old'], 'mount v1');
  t.match(ok(t, daemon, ['mount', 'ls'], 'ls'), /old .* tagged:latest\n/, 'before the re-tag the tag is shown');
  ok(t, daemon, ['image', 'import', ociImage(dir, 'v2', { version: '2\n' }), '--name', 'tagged:latest'], 'the tag moves to v2');
  t.match(ok(t, daemon, ['mount', 'ls'], 'ls'), new RegExp(`old .* ${v1.slice(7, 19)} \\(was tagged:latest\\)\\n`), 'after it, the image id the mount uses');
  t.equal(fs.readFileSync(path.join(mnt, 'version'), 'utf8'), '1\n', 'which is what it shows');

  fs.writeFileSync(path.join(mnt, 'kept'), 'kept\n');
  const removed = daemon.json<{ RetainedUpperDir: string }>(['mount', 'rm', 'old', '--keep-upper']);
  const retained = (await info(daemon)).RetainedUppers;
  t.match(retained, [{ Kind: 'upper', Path: removed.RetainedUpperDir }], 'info lists the kept upper');
  t.equal(fs.readFileSync(path.join(retained[0]!.Path, 'kept'), 'utf8'), 'kept\n');
  t.match(ok(t, daemon, ['info'], 'info as a table'), /Retained uppers/);
  t.same(daemon.json<{ DeletedLost: string[] }>(['system', 'prune', '--lost']).DeletedLost, [], 'prune --lost leaves retained uppers alone');
  t.same(daemon.json<{ DeletedRetained: string[] }>(['system', 'prune', '--retained']).DeletedRetained, [retained[0]!.Name], 'prune --retained deletes it');
  t.notOk(fs.existsSync(removed.RetainedUpperDir));
  t.same((await info(daemon)).RetainedUppers, []);
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });
});

t.test('an unreadable store is reported as such, not as locked', async (t) => {
  const dir = tempDir(t, 'safety-access');
  fs.chmodSync(dir, 0o755);
  const root = path.join(dir, 'root');
  await editStore(root, async () => undefined);
  fs.chmodSync(root, 0o700);
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, strataCli, '--root', root, '--socket', path.join(dir, 'none.sock'), 'image', 'ls'], { encoding: 'utf8' });
  t.equal(r.status, 1);
  t.match(r.stderr, /^strata: STRATA_STORE_ACCESS: .*permission denied/, 'a permission problem has its own code');
  t.notMatch(r.stderr, /LOCKED|another daemon/);
});
