/**
 * mount diff, mount commit and image export, judged by real tools: the kernel's own upper for the change list,
 * umoci and skopeo for the exported layouts and archives, a fresh state dir for the docker-archive round trip, an
 * appending writer for a live commit, and a small tmpfs for a full disk.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { diffUpper } from '../lib/layers/diff.js';
import { chainIdsOf, type Digest } from '../lib/layers/digest.js';
import { sys } from '../lib/native/index.js';
import { buildBusyboxOci, Scratch } from './fixtures/store-fixtures.js';
import { builtFile } from './helpers/build.js';
import { isMounted, rawRequest, startDaemon, tempDir, type DaemonHandle, type Teardown } from './helpers/daemon-harness.js';

const stratad = builtFile('dist/daemon/stratad.js');
const strataCli = builtFile('dist/lib/cli/strata.js');

interface Change { Kind: 'A' | 'C' | 'D'; Path: string }
interface CommitJson { Id: string; Name: string; LayerId: string; DiffID: string; Layers: number; Stats: { filesRead: number; lowerLookups: number } }
interface ImageJson { id: string; names: string[]; diffIDs: string[]; chainIDs: string[]; config: { history?: Array<{ comment?: string }> } }
interface MountJson { Name: string; GraphDriver: { Data: { LowerDir: string; UpperDir: string } } }
interface ExportJson { Images: Array<{ Id: string; ExportedId: string; DiffIDs: string[] }> }

/** The change set of the issue: add, modify, chmod, delete a file and a dir, rename a dir, hard links, xattr, opaque. */
const CHANGES = `set -e
echo new > etc/added
echo more >> etc/passwd
chmod 600 opt/app/config
rm bin/cat
rm -rf opt/app/cache
mv opt/app opt/moved
ln etc/added etc/added.link
ln bin/busybox bin/bb-hard
setfattr -n user.note -v hi etc/added
rm -rf var && mkdir var && echo v > var/new
`;

function sh(cwd: string, script: string): void {
  const r = spawnSync('sh', ['-c', script], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`script failed in ${cwd}: ${r.stderr}`);
}

function runOk(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Name by name: type, mode, owner, size (files), link target, nlink (non-dirs), content hash, user xattrs. */
function describe(dir: string): string[] {
  const lines = runOk('find', [dir, '-mindepth', '1', '-printf', '%P\\t%y\\t%m\\t%U:%G\\t%s\\t%n\\t%l\\n']).split('\n').filter(Boolean);
  return lines.map((line) => {
    const [rel, type, mode, owner, size, nlink, link] = line.split('\t');
    const full = path.join(dir, rel!);
    const xattrs = sys.llistxattr(full).filter((n) => n.startsWith('user.')).sort()
      .map((n) => `${n}=${sys.lgetxattr(full, n)?.toString('hex')}`).join(',');
    const hash = type === 'f' ? runOk('sha256sum', [full]).slice(0, 16) : '';
    return [rel, type, mode, owner, type === 'f' ? size : '', type === 'd' ? '' : nlink, link, hash, xattrs].join(' ');
  }).sort();
}

/**
 * One daemon for the whole file (importing busybox is the slow part), its state dir on a tmpfs of its own so that
 * the full-disk case can fill it.
 */
async function daemonWithBusybox(t: Teardown & ConstructorParameters<typeof Scratch>[0], dir: string): Promise<{ daemon: DaemonHandle; small: string }> {
  const small = path.join(dir, 'state');
  fs.mkdirSync(small);
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=192m', 'tmpfs', small]);
  const daemon = await startDaemon(t, { root: path.join(small, 'root'), socket: path.join(dir, 'strata.sock'), execStart: [process.execPath, stratad] });
  // After the daemon's teardown (teardowns run in reverse): nothing uses the tmpfs any more.
  t.teardown(() => { spawnSync('umount', ['-l', small]); });
  const layout = buildBusyboxOci(new Scratch(t, 'commit-export-img'));
  const r = daemon.cli(['image', 'import', layout, '--name', 'busybox:1.0']);
  if (r.status !== 0) throw new Error(`import failed: ${r.stderr}`);
  return { daemon, small };
}

function createMount(daemon: DaemonHandle, dir: string, name: string, image: string): string {
  const target = path.join(dir, `mnt-${name}`);
  fs.mkdirSync(target);
  daemon.json(['mount', 'create', image, '--target', target, '--name', name]);
  return target;
}

t.test('commit and export', async (t) => {
const dir = tempDir(t, 'commit-export');
const { daemon, small } = await daemonWithBusybox(t, dir);

await t.test('diff, commit and export of a changed mount, judged by the kernel, umoci and skopeo', async (t) => {
  const target = createMount(daemon, dir, 'box', 'busybox:1.0');
  sh(target, CHANGES);
  const [mountInfo] = daemon.json<MountJson[]>(['mount', 'inspect', 'box']);
  const lowers = mountInfo!.GraphDriver.Data.LowerDir.split(':');

  // The same change set on kernel overlayfs over the same layers; its upper walked by the same rules.
  const kernel = { upper: path.join(dir, 'k-upper'), work: path.join(dir, 'k-work'), mnt: path.join(dir, 'k-mnt') };
  for (const d of Object.values(kernel)) fs.mkdirSync(d);
  runOk('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowers.join(':')},upperdir=${kernel.upper},workdir=${kernel.work},redirect_dir=on,index=on`, kernel.mnt]);
  try {
    sh(kernel.mnt, CHANGES);
  } finally {
    runOk('umount', [kernel.mnt]);
  }
  const kernelChanges = diffUpper(kernel.upper, lowers);
  const strataChanges = daemon.json<Change[]>(['mount', 'diff', 'box']);
  t.same(strataChanges, kernelChanges, 'strata\'s A/C/D set equals the one read from the kernel\'s upper');
  const line = (c: Change) => `${c.Kind} ${c.Path}`;
  const text = strataChanges.map(line);
  for (const expected of ['A /etc/added', 'A /etc/added.link', 'C /etc/passwd', 'C /opt/app/config', 'D /bin/cat', 'D /opt/app', 'A /opt/moved',
    'A /opt/moved/config', 'A /bin/bb-hard', 'C /bin/busybox', 'C /var', 'D /var/empty', 'A /var/new']) {
    t.ok(text.includes(expected) || (expected === 'C /opt/app/config' && !text.includes('A /opt/app/config')), `diff has ${expected}`);
  }
  t.notOk(text.some((l) => l.includes('/opt/moved/cache')), 'the deleted cache dir stays deleted under its new name');
  t.equal(daemon.cli(['mount', 'diff', 'box']).stdout, `${text.join('\n')}\n`, 'plain output is docker diff\'s');

  // Commit, export as OCI, and let umoci unpack it.
  const commit = daemon.json<CommitJson>(['mount', 'commit', 'box', 'snap:v1', '--message', 'first']);
  t.equal(commit.Name, 'snap:v1');
  t.equal(commit.Layers, 3, 'the busybox chain plus one layer');
  t.equal(commit.Stats.lowerLookups > 0, true, 'the redirected dir needed its lower contents');
  const [image] = daemon.json<ImageJson[]>(['image', 'inspect', 'snap:v1']);
  t.equal(image!.id, commit.Id);
  t.equal(image!.diffIDs.at(-1), commit.DiffID, 'the new diffID is last in the config');
  t.same(image!.chainIDs, chainIdsOf(image!.diffIDs as Digest[]), 'chainIDs per the OCI spec');
  t.equal(image!.config.history?.at(-1)?.comment, 'first', 'a history entry with the message');
  t.equal(daemon.cli(['mount', 'diff', 'box']).stdout, `${text.join('\n')}\n`, 'the mount keeps its upper after a commit');

  const layout = path.join(dir, 'export-oci');
  const exported = daemon.json<ExportJson>(['image', 'export', 'snap:v1', '--format', 'oci', '-o', layout]);
  t.equal(exported.Images.length, 1);
  t.equal(exported.Images[0]!.DiffIDs.at(-1), commit.DiffID, 'the committed layer exports with its own diffID');
  const bundle = path.join(dir, 'bundle');
  runOk('umoci', ['unpack', '--image', `${layout}:v1`, bundle]);
  t.same(describe(path.join(bundle, 'rootfs')), describe(target), 'umoci\'s rootfs equals the merged view name by name');
  runOk('skopeo', ['inspect', `oci:${layout}:v1`]);
  const copied = path.join(dir, 'copied.tar');
  runOk('skopeo', ['copy', '--quiet', `oci:${layout}:v1`, `docker-archive:${copied}:snap:v1`]);
  t.ok(fs.statSync(copied).size > 0, 'skopeo copies it to a docker archive');

  const zst = path.join(dir, 'export-zstd.tar');
  daemon.json(['image', 'export', 'snap:v1', '--compression', 'zstd', '-o', zst]);
  t.match(runOk('skopeo', ['inspect', '--raw', `oci-archive:${zst}:v1`]), /tar\+zstd/, 'a zstd OCI archive skopeo reads');

  // Progress through the daemon: newline-delimited JSON with ?progress=true, and bars on a terminal.
  const streamed = await rawRequest(daemon.socket, 'POST', '/images/export?progress=true',
    JSON.stringify({ Refs: ['snap:v1'], Format: 'docker', Output: path.join(dir, 'streamed.tar') }), { 'content-type': 'application/json' });
  const events = streamed.body.trim().split('\n').map((l) => JSON.parse(l) as { Progress?: unknown; Result?: ExportJson; Error?: { code: string } });
  t.equal(streamed.type, 'application/x-ndjson');
  t.ok(events.slice(0, -1).every((e) => e.Progress !== undefined) && events.at(-1)?.Result?.Images.length === 1, 'progress lines, then the result');
  const refused = await rawRequest(daemon.socket, 'POST', '/images/export?progress=true',
    JSON.stringify({ Refs: ['snap:v1'], Format: 'docker', Output: path.join(dir, 'streamed.tar') }), { 'content-type': 'application/json' });
  t.equal((JSON.parse(refused.body.trim().split('\n').at(-1)!) as { Error?: { code: string } }).Error?.code, 'STRATA_CONFLICT', 'an error ends the stream');
  const tty = spawnSync('script', ['-qec', `${process.execPath} ${strataCli} --socket ${daemon.socket} image export snap:v1 -o ${path.join(dir, 'tty-oci')}`, '/dev/null'], { encoding: 'utf8' });
  t.match(tty.stdout, /export layer 1\/3 \[/, 'a terminal gets one bar per layer');
  t.notMatch(daemon.cli(['image', 'export', 'snap:v1', '-o', path.join(dir, 'pipe-oci')]).stderr, /layer/, 'a pipe gets none');

  // A second commit on top, then the multi-layer image as a docker archive into a fresh state dir.
  const target2 = createMount(daemon, dir, 'box2', 'snap:v1');
  sh(target2, 'echo second > etc/second && rm -rf opt/moved');
  const commit2 = daemon.json<CommitJson>(['mount', 'commit', 'box2', 'snap:v2']);
  t.equal(commit2.Layers, 4);
  const archive = path.join(dir, 'snap.tar');
  const dockerExport = daemon.json<ExportJson>(['image', 'export', 'snap:v2', 'snap:v1', '--format', 'docker', '-o', archive]);
  t.match(runOk('skopeo', ['inspect', `docker-archive:${archive}:snap:v2`]), /"Layers"/, 'skopeo reads the docker archive');
  const fresh = path.join(dir, 'fresh');
  const re = spawnSync(process.execPath, [strataCli, '--root', fresh, '--socket', path.join(dir, 'none.sock'), '--json', 'image', 'import', archive], { encoding: 'utf8' });
  t.equal(re.status, 0, `re-import into a fresh state dir: ${re.stderr}`);
  const reimported = JSON.parse(re.stdout) as ImageJson[];
  const v2 = reimported.find((i) => i.names.includes('snap:v2'))!;
  t.same(v2.diffIDs, dockerExport.Images[0]!.DiffIDs, 'the same diffIDs as exported');
  t.same(v2.chainIDs, chainIdsOf(v2.diffIDs as Digest[]), 'and their chainIDs');
  const [stored] = daemon.json<ImageJson[]>(['image', 'inspect', 'snap:v2']);
  t.same(v2.diffIDs.slice(2), stored!.diffIDs.slice(2), 'layers strata committed keep their diffIDs through export and import');
  t.same(v2.chainIDs.slice(2).length, 2);
  t.equal(reimported.length, 2, 'both images share one archive');

  daemon.cli(['mount', 'rm', 'box2']);
  daemon.json(['mount', 'unmount', 'box']);
  t.same(daemon.json<Change[]>(['mount', 'diff', 'box']), strataChanges, 'diff works on an unmounted mount too');
  daemon.cli(['mount', 'rm', 'box']);
  t.notOk(isMounted(target));
});

await t.test('a live commit while a writer appends: the layer holds a prefix of whole records', async (t) => {
  const target = createMount(daemon, dir, 'live', 'busybox:1.0');
  const record = (i: number) => `${String(i).padStart(8, '0')}${'x'.repeat(247)}\n`;
  // 256-byte records appended one write(2) each, as fast as the mount takes them.
  // Paced (a pause every 32 records) so the file stays a few MiB; each record is one write(2).
  const writer = spawn(process.execPath, ['-e', `
    const fs = require('fs');
    const fd = fs.openSync(process.argv[1], 'a');
    let i = 0;
    const rec = (i) => String(i).padStart(8, '0') + 'x'.repeat(247) + '\\n';
    const burst = () => { for (let n = 0; n < 32; n++) fs.writeSync(fd, rec(i++)); setTimeout(burst, 2); };
    burst();
  `, path.join(target, 'log')], { stdio: 'ignore' });
  t.teardown(() => { writer.kill('SIGKILL'); });
  while (!fs.existsSync(path.join(target, 'log')) || fs.statSync(path.join(target, 'log')).size < 256 * 1000) await new Promise((r) => setTimeout(r, 20));
  const sizes: number[] = [];
  for (let n = 0; n < 3; n++) {
    const c = daemon.json<CommitJson>(['mount', 'commit', 'live', `live:${n}`]);
    const [layer] = daemon.json<Array<{ path: string }>>(['layer', 'inspect', c.LayerId]);
    const data = fs.readFileSync(path.join(layer!.path, 'log'), 'latin1');
    t.equal(data.length % 256, 0, `commit ${n}: whole records only (${data.length} bytes)`);
    let ok = true;
    for (let i = 0; i < data.length / 256 && ok; i++) ok = data.slice(i * 256, (i + 1) * 256) === record(i);
    t.ok(ok, `commit ${n}: records 0..${data.length / 256 - 1} in order, none torn`);
    sizes.push(data.length);
  }
  t.ok(sizes[2]! >= sizes[0]!, 'later commits hold at least as much');
  const exited = new Promise((r) => writer.on('exit', r));
  writer.kill('SIGKILL');
  await exited;
  const final = fs.readFileSync(path.join(target, 'log'), 'latin1');
  t.ok(final.length >= sizes[2]!, 'the writer kept writing through the commits');
  daemon.cli(['mount', 'rm', 'live']);
});

await t.test('bad input: a taken tag, a bad ref, an unknown mount, an existing output, a full disk', async (t) => {
  const target = createMount(daemon, dir, 'bad', 'busybox:1.0');
  fs.writeFileSync(path.join(target, 'note'), 'hello\n');
  const small1 = daemon.json<CommitJson>(['mount', 'commit', 'bad', 'taken:1']);
  // O(change): a 1-file change reads that one file and looks nothing up in the image's layers.
  t.equal(small1.Stats.filesRead, 1, 'a 1-file commit reads one file');
  t.equal(small1.Stats.lowerLookups, 0, 'and no lower layer');
  const images = () => daemon.json<ImageJson[]>(['image', 'ls']).map((i) => i.id).sort();
  const before = images();

  const taken = daemon.cli(['mount', 'commit', 'bad', 'taken:1']);
  t.equal(taken.status, 1);
  t.match(taken.stderr, /STRATA_CONFLICT: image name taken:1 is already taken .* --force/, 'a taken tag needs --force');
  for (const ref of ['Upper:case', 'x@sha256:00', 'bad ref', 'sha256:0123456789abcdef0123']) {
    const r = daemon.cli(['mount', 'commit', 'bad', ref]);
    t.equal(r.status, 2, `ref "${ref}" is refused as a usage error`);
    t.match(r.stderr, /STRATA_BAD_OPTION: .*not a valid/, `and named: ${r.stderr.trim()}`);
  }
  t.match(daemon.cli(['mount', 'commit', 'nosuch', 'x:1']).stderr, /STRATA_NOT_FOUND: no mount named "nosuch"/);
  t.match(daemon.cli(['mount', 'diff', 'nosuch']).stderr, /STRATA_NOT_FOUND/);
  t.same(images(), before, 'no image was made');
  const forced = daemon.json<CommitJson>(['mount', 'commit', 'bad', 'taken:1', '--force', '--change-free']);
  t.equal(daemon.json<ImageJson[]>(['image', 'inspect', 'taken:1'])[0]!.id, forced.Id, '--force moves the tag');

  const out = path.join(dir, 'exists');
  fs.mkdirSync(out);
  t.match(daemon.cli(['image', 'export', 'taken:1', '-o', out]).stderr, /STRATA_CONFLICT: .*already exists/);
  t.match(daemon.cli(['image', 'export', 'nosuch:1', '-o', path.join(dir, 'x')]).stderr, /STRATA_NOT_FOUND: no image nosuch:1/);

  // Fill the disk: leave 10 MiB, put 6 MiB in the upper; its snapshot cannot fit.
  const beforeFull = images();
  const filler = path.join(small, 'filler');
  const free = Number(runOk('df', ['--output=avail', '-B1', small]).split('\n')[1]);
  runOk('fallocate', ['-l', String(free - 10 * 2 ** 20), filler]);
  runOk('dd', ['if=/dev/urandom', `of=${path.join(target, 'big')}`, 'bs=1M', 'count=6', 'status=none']);
  const full = daemon.cli(['mount', 'commit', 'bad', 'full:1']);
  t.equal(full.status, 1);
  t.match(full.stderr, /ENOSPC: commit of mount bad failed: no space left .*nothing was made/, `a clear error: ${full.stderr.trim()}`);
  t.same(images(), beforeFull, 'no image');
  t.same(fs.readdirSync(path.join(small, 'root', 'layer-tmp')), [], 'no snapshot or staged layer left in layer-tmp');
  t.equal(fs.readFileSync(path.join(target, 'note'), 'utf8'), 'hello\n', 'the mount still serves');
  fs.rmSync(path.join(target, 'big'));
  fs.rmSync(filler);
  daemon.cli(['mount', 'rm', 'bad']);
});
});
