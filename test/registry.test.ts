/**
 * Pull and push against a real registry (Debian's docker-registry on 127.0.0.1, started here), with skopeo and
 * umoci as independent judges, plus a tiny in-test HTTP server for what a healthy registry never does (wrong
 * digests, truncated blobs, error statuses, a huge manifest, the Bearer token handshake).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import t, { type Test } from 'tap';
import { Scratch, buildBusyboxOci, listDir, run, runOk, strata, strataJs, tarDir, writeOciLayout } from './fixtures/store-fixtures.js';
import { CountingProxy, RealRegistry, freePort } from './helpers/registry.js';
import { repoRoot, startDaemon, tempDir, waitFor } from './helpers/daemon-harness.js';
import { diffTrees, snapshotTree } from './helpers/tree.js';
import { openImageServices } from '../lib/images/service.js';
import { createLogger } from '../lib/log.js';
import { usesPlainHttp } from '../lib/registry/reference.js';
import { LostAndFound } from '../lib/store/lost-found.js';
import { Metastore } from '../lib/store/metastore.js';

interface PushJson { reference: string; manifestDigest: string; configDigest: string; layers: Array<{ digest: string; diffID: string; size: number; action: string }>; uploadedBytes: number }
interface PullJson { reference: string; id: string; names: string[]; manifestDigest: string; layers: Array<{ digest: string; size: number; action: string }>; downloadedBytes: number }

function json<T>(root: string, ...args: string[]): T {
  const r = strata(root, '--json', ...args);
  if (r.status !== 0) throw new Error(`strata ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** The CLI without blocking this process: needed whenever the server it talks to runs in this process. */
function strataAsync(root: string, ...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [strataJs, '--root', root, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

async function jsonAsync<T>(root: string, ...args: string[]): Promise<T> {
  const r = await strataAsync(root, '--json', ...args);
  if (r.status !== 0) throw new Error(`strata ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** A plain directory counts its subdirs in nlink, an overlay mount does not; everything else must match. */
function withoutDirLinks(tree: ReturnType<typeof snapshotTree>): ReturnType<typeof snapshotTree> {
  return Object.fromEntries(Object.entries(tree).map(([k, e]) => [k, e.type === 'dir' ? { ...e, nlink: 0 } : e]));
}

async function lowerDirsOf(root: string, ref: string): Promise<string[]> {
  const logger = createLogger({ level: 'silent' });
  const metastore = await Metastore.open(path.join(root, 'db'), logger);
  try {
    const services = await openImageServices(metastore, root, logger);
    const top = (await services.images.resolve(ref)).chainIDs.at(-1);
    return top === undefined ? [] : await services.layers.lowerDirs(top);
  } finally {
    await metastore.close();
  }
}

/** The merged tree of a stored image, through a read-only kernel overlay mount. */
async function mergedTree(s: Scratch, root: string, ref: string, label: string) {
  const mnt = s.path(`mnt-${label}`);
  s.mountOverlay('kernel', '/', (await lowerDirsOf(root, ref)).join(':'), mnt);
  try {
    return snapshotTree(mnt);
  } finally {
    s.unmount(mnt);
  }
}

/** Nothing of a failed pull is visible: no image, no layer, nothing staged (`records`: also ask the CLI). */
function assertNothingLanded(t: Test, root: string, what: string, records = true): void {
  if (records) {
    t.same(json<unknown[]>(root, 'image', 'ls'), [], `${what}: no image`);
    t.same(json<unknown[]>(root, 'layer', 'ls'), [], `${what}: no layer`);
  }
  t.same(listDir(path.join(root, 'layers')), [], `${what}: no layer dir`);
  t.same(listDir(path.join(root, 'layer-blobs')), [], `${what}: no layer blob`);
  t.same(listDir(path.join(root, 'layer-tmp')), [], `${what}: nothing staged`);
  t.same(listDir(path.join(root, 'registry-cache')).filter((n) => n !== 'blobs'), [], `${what}: no pull work dir left`);
}

t.test('push an imported image, pull it into an empty state dir: the same tree; second transfers move nothing', async (t) => {
  const s = new Scratch(t, 'registry-roundtrip');
  const registry = new RealRegistry(t, s.mkdir('registry'));
  await registry.start();
  const layout = buildBusyboxOci(s);
  const host1 = s.path('host1');
  const host2 = s.path('host2');
  runOk(process.execPath, [strataJs, '--root', host1, 'image', 'import', layout, '--name', 'busybox:1.0']);

  // Chunked upload (PATCH + PUT) for the big layer, a single PUT for the small one and the config.
  const pushed = json<PushJson>(host1, 'image', 'push', 'busybox:1.0', `${registry.host}/bb:1`, '--chunk-size', String(256 * 1024));
  t.same(pushed.layers.map((l) => l.action), ['uploaded', 'uploaded'], 'both layers uploaded the first time');
  const log = registry.accessLog();
  t.ok(log.filter((l) => /"PATCH \/v2\/bb\/blobs\/uploads\//.test(l)).length >= 4, 'the big layer went up in PATCH chunks');
  t.ok(log.some((l) => /"HEAD \/v2\/bb\/blobs\/sha256:/.test(l)), 'blobs were checked with HEAD before the upload');
  t.ok(log.some((l) => /"PUT \/v2\/bb\/manifests\/1 HTTP\/1\.1" 201/.test(l)), 'the manifest was stored');

  const again = json<PushJson>(host1, 'image', 'push', 'busybox:1.0', `${registry.host}/bb:1`);
  t.same(again.layers.map((l) => l.action), ['present', 'present'], 'a second push finds every layer with HEAD');
  t.equal(again.uploadedBytes, 0, 'and uploads nothing');
  t.equal(again.manifestDigest, pushed.manifestDigest, 'the re-made tars are byte for byte the same (deterministic)');

  const pulled = json<PullJson>(host2, 'image', 'pull', `${registry.host}/bb:1`);
  t.equal(pulled.id, pushed.configDigest, 'the pulled image is the pushed config');
  t.equal(pulled.manifestDigest, pushed.manifestDigest, 'under the pushed manifest');
  t.same(pulled.names, [`${registry.host}/bb:1`], 'named by its reference');
  t.same(listDir(path.join(host2, 'registry-cache', 'blobs')), [], 'downloaded blobs are gone once imported');
  const packed = json<Array<{ packed: boolean; size: number; compressedDigest: string }>>(host2, 'layer', 'ls');
  t.ok(packed.length === 2 && packed.every((l) => l.packed && l.size === 0), 'the pulled layers are stored packed, as their blobs');
  t.same(listDir(path.join(host2, 'layer-blobs')).length, 2, 'both blobs are in layer-blobs/');
  t.same(listDir(path.join(host2, 'layers')), [], 'nothing is extracted by the pull');
  t.match(strata(host2, 'image', 'ls').stdout, /\(\+2 packed\)/, 'image ls says the layers are still packed');
  const [inspected] = json<Array<{ size: number; packedLayers: number }>>(host2, 'image', 'inspect', `${registry.host}/bb:1`);
  t.same([inspected?.size, inspected?.packedLayers], [0, 2], 'image inspect counts no extracted bytes yet, 2 packed layers');

  const before = await mergedTree(s, host1, 'busybox:1.0', 'host1');
  const after = await mergedTree(s, host2, `${registry.host}/bb:1`, 'host2');
  const extracted = json<Array<{ packed: boolean; size: number }>>(host2, 'layer', 'ls');
  t.ok(extracted.every((l) => !l.packed && l.size > 0), 'asking for the lower dirs extracted both layers');
  t.same(listDir(path.join(host2, 'layer-blobs')), [], 'and deleted their blobs');
  const [inspectedAfter] = json<Array<{ size: number; packedLayers: number }>>(host2, 'image', 'inspect', `${registry.host}/bb:1`);
  t.ok(inspectedAfter !== undefined && inspectedAfter.size > 0 && inspectedAfter.packedLayers === 0, `image inspect counts them now (${inspectedAfter?.size} bytes)`);
  t.same(listDir(path.join(host2, 'layer-tmp')), [], 'with nothing left staged');
  t.same(diffTrees(before, after), [], 'the merged trees are equal: types, modes, owners, content, links, xattrs, whiteouts, opaque dir');
  t.ok(Object.keys(after).includes('bin/suidtool') && !Object.keys(after).includes('bin/ls'), 'the whiteout and the new file made it');

  const repull = json<PullJson>(host2, 'image', 'pull', `${registry.host}/bb:1`);
  t.same(repull.layers.map((l) => l.action), ['present', 'present'], 'pulling again downloads no layer');
  t.equal(repull.downloadedBytes, 0);

  // host2 knows where the blobs live: pushing to another repository mounts them instead of uploading.
  const mounted = json<PushJson>(host2, 'image', 'push', `${registry.host}/bb:1`, `${registry.host}/copy:1`);
  t.same(mounted.layers.map((l) => l.action), ['mounted', 'mounted'], 'cross-repository mount');
  t.equal(mounted.uploadedBytes, 0, 'no bytes uploaded (the config was mounted too)');
  t.equal(mounted.manifestDigest, pushed.manifestDigest, 'the same manifest');
  t.ok(registry.accessLog().some((l) => /"POST \/v2\/copy\/blobs\/uploads\/\?mount=sha256:[0-9a-f]{64}&from=bb HTTP\/1\.1" 201/.test(l)), 'the registry answered the mount with 201');
});

t.test('skopeo and umoci agree both ways; Docker schema 2 manifests and an index with platforms', async (t) => {
  const s = new Scratch(t, 'registry-skopeo');
  const registry = new RealRegistry(t, s.mkdir('registry'));
  await registry.start();
  const layout = buildBusyboxOci(s);
  const reference = s.path('reference');
  runOk('umoci', ['unpack', '--image', `${layout}:bb`, reference]);
  const expected = snapshotTree(path.join(reference, 'rootfs'));

  // skopeo pushes (OCI, then Docker v2 schema 2), strata pulls.
  runOk('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', `oci:${layout}:bb`, `docker://${registry.host}/sk:oci`]);
  runOk('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--format', 'v2s2', `oci:${layout}:bb`, `docker://${registry.host}/sk:v2s2`]);
  const root = s.path('root');
  const oci = json<PullJson>(root, 'image', 'pull', `${registry.host}/sk:oci`);
  const index = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  const manifest = JSON.parse(fs.readFileSync(path.join(layout, 'blobs/sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { config: { digest: string } };
  t.equal(oci.id, manifest.config.digest, 'the image skopeo pushed is the image umoci built');
  t.same(diffTrees(withoutDirLinks(expected), withoutDirLinks(await mergedTree(s, root, `${registry.host}/sk:oci`, 'oci'))), [], 'its tree is what umoci unpacks');
  const v2s2 = json<PullJson>(root, 'image', 'pull', `${registry.host}/sk:v2s2`);
  t.equal(v2s2.id, oci.id, 'the Docker schema 2 copy is the same image');
  t.same(v2s2.layers.map((l) => l.action), ['present', 'present'], 'whose layers are already stored (by diffID)');

  // An index: amd64 is the OCI manifest, arm64 the Docker one.
  const head = (tag: string) => run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/sk:${tag}`]).stdout;
  const ociManifest = Buffer.from(head('oci'));
  const dockerManifest = Buffer.from(head('v2s2'));
  const digest = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  const indexBody = JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      { mediaType: 'application/vnd.docker.distribution.manifest.v2+json', digest: digest(dockerManifest), size: dockerManifest.length, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: digest(ociManifest), size: ociManifest.length, platform: { os: 'linux', architecture: 'amd64' } },
    ],
  });
  const put = await httpRequest(registry.port, 'PUT', '/v2/sk/manifests/multi', { 'content-type': 'application/vnd.oci.image.index.v1+json' }, Buffer.from(indexBody));
  t.equal(put.status, 201, 'the registry took the index');
  const viaIndex = json<PullJson>(root, 'image', 'pull', `${registry.host}/sk:multi`, '--platform', 'linux/amd64');
  t.equal(viaIndex.manifestDigest, digest(ociManifest), 'linux/amd64 picks the amd64 entry');
  const arm = json<PullJson>(root, 'image', 'pull', `${registry.host}/sk:multi`, '--platform', 'linux/arm64');
  t.equal(arm.manifestDigest, digest(dockerManifest), 'linux/arm64 picks the arm64 entry');
  const none = strata(root, 'image', 'pull', `${registry.host}/sk:multi`, '--platform', 'linux/s390x');
  t.equal(none.status, 1);
  t.match(none.stderr, /STRATA_NOT_FOUND: pull 127\.0\.0\.1:\d+\/sk:multi: the index has no image for linux\/s390x \(it has linux\/arm64\/v8, linux\/amd64\)/, 'a missing platform is named with the ones offered');

  // strata pushes, skopeo copies it out, umoci unpacks it.
  const host = s.path('host');
  runOk(process.execPath, [strataJs, '--root', host, 'image', 'import', layout, '--name', 'busybox:1.0']);
  json<PushJson>(host, 'image', 'push', 'busybox:1.0', `${registry.host}/fromstrata:1`);
  const out = s.path('out');
  runOk('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${registry.host}/fromstrata:1`, `oci:${out}:x`]);
  const unpacked = s.path('unpacked');
  runOk('umoci', ['unpack', '--image', `${out}:x`, unpacked]);
  // The layer root's own mtime is not carried: the commit/export tar writer gives "./" fixed metadata.
  const rootTimeless = (tree: ReturnType<typeof snapshotTree>) => ({ ...tree, '': { ...tree['']!, mtime: '-' } });
  t.same(diffTrees(rootTimeless(expected), rootTimeless(snapshotTree(path.join(unpacked, 'rootfs')))), [], 'umoci unpacks what strata pushed to the tree it built');
});

t.test('a committed image keeps its id through push and pull', async (t) => {
  const dir = tempDir(t, 'registry-commit');
  const s = new Scratch(t, 'registry-commit');
  const registry = new RealRegistry(t, s.mkdir('registry'));
  await registry.start();
  const base = s.mkdir('base');
  fs.mkdirSync(path.join(base, 'etc'));
  fs.writeFileSync(path.join(base, 'etc/motd'), 'base\n');
  const layout = s.path('layout');
  const baseTar = fs.readFileSync(tarDir(base, s.path('base.tar')));
  writeOciLayout(layout, [baseTar], 'base');
  // The base layer's original blob is already in the repository (another tool uploaded it as it is), so it needs
  // no re-made tar. (skopeo would gzip it on the way, under another digest.)
  const start = await httpRequest(registry.port, 'POST', '/v2/snap/blobs/uploads/', {});
  const location = new URL(String(start.headers.location), `http://${registry.host}`);
  location.searchParams.set('digest', sha(baseTar));
  t.equal((await httpRequest(registry.port, 'PUT', location.pathname + location.search, { 'content-type': 'application/octet-stream' }, baseTar)).status, 201, 'the base blob is uploaded by hand');

  const daemon = await startDaemon(t, { root: path.join(dir, 'root'), socket: path.join(dir, 'strata.sock'), execStart: [process.execPath, path.join(repoRoot, 'dist/daemon/stratad.js')] });
  daemon.json(['image', 'import', layout, '--name', 'base:1']);
  const target = path.join(dir, 'mnt');
  fs.mkdirSync(target);
  daemon.json(['mount', 'create', 'base:1', '--target', target, '--name', 'box']);
  fs.writeFileSync(path.join(target, 'etc/motd'), 'changed in a mount\n');
  fs.writeFileSync(path.join(target, 'added'), 'new file\n');
  const commit = daemon.json<{ Id: string; DiffID: string }>(['mount', 'commit', 'box', 'snap:1']);
  t.equal(daemon.cli(['mount', 'rm', 'box']).status, 0, 'the mount goes away');

  const pushed = daemon.json<PushJson>(['image', 'push', 'snap:1', `${registry.host}/snap:1`]);
  t.same(pushed.layers.map((l) => l.action), ['present', 'uploaded'], 'the base blob is there; the committed layer is uploaded');
  t.equal(pushed.layers[1]!.diffID, commit.DiffID, 'the committed layer is tarred again byte for byte: same diffID');
  t.equal(pushed.configDigest, commit.Id, 'so the pushed image has the committed image\'s id');
  await daemon.kill('SIGTERM');

  const root = s.path('root');
  const pulled = json<PullJson>(root, 'image', 'pull', `${registry.host}/snap:1`);
  t.equal(pulled.id, commit.Id, 'pulled on another host, it is the same image');
  const tree = await mergedTree(s, root, `${registry.host}/snap:1`, 'commit');
  t.equal(tree['etc/motd']?.sha256, createHash('sha256').update('changed in a mount\n').digest('hex'), 'with the change made in the mount');
  t.ok(tree.added !== undefined, 'and the added file');
});

t.test('resume: the registry killed mid-pull, restarted, and only the missing bytes move', async (t) => {
  const s = new Scratch(t, 'registry-resume');
  const registry = new RealRegistry(t, s.mkdir('registry'));
  await registry.start();
  const proxy = new CountingProxy(t, () => registry.port);
  await proxy.start();
  // Two layers of random data (incompressible: the gzip blobs are as big as the files).
  const tars: Buffer[] = [];
  for (const [name, size] of [['big', 6 << 20], ['second', 3 << 20]] as const) {
    const dir = s.mkdir(`layer-${name}`);
    fs.writeFileSync(path.join(dir, `${name}.bin`), randomBytes(size));
    tars.push(fs.readFileSync(tarDir(dir, s.path(`${name}.tar`))));
  }
  const layout = s.path('layout');
  writeOciLayout(layout, tars, 'r');
  const host1 = s.path('host1');
  runOk(process.execPath, [strataJs, '--root', host1, 'image', 'import', layout, '--name', 'big:1']);
  const pushed = json<PushJson>(host1, 'image', 'push', 'big:1', `${registry.host}/big:1`);
  const configHead = await httpRequest(registry.port, 'HEAD', `/v2/big/blobs/${pushed.configDigest}`, {});
  const configSize = Number(configHead.headers['content-length']);
  const total = pushed.layers.reduce((n, l) => n + l.size, 0) + configSize;

  const host2 = s.path('host2');
  const cut = proxy.cutAfter(4 << 20);
  const first = spawn(process.execPath, [strataJs, '--root', host2, 'image', 'pull', `${proxy.host}/big:1`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  first.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const exited = new Promise<number | null>((resolve) => first.on('exit', (code) => resolve(code)));
  await cut;
  await registry.kill();
  proxy.dropConnections();
  t.equal(await exited, 1, 'the pull fails once the registry is gone');
  t.match(stderr, /strata: STRATA_REGISTRY_FAILED: pull 127\.0\.0\.1:\d+\/big:1: fetching blob sha256:[0-9a-f]{64}: .*kept for the next attempt/, `the error names the ref, the step and what was kept: ${stderr}`);
  assertNothingLanded(t, host2, 'after the interrupted pull');
  const cacheDir = path.join(host2, 'registry-cache', 'blobs');
  const kept = listDir(cacheDir).reduce((n, f) => n + fs.statSync(path.join(cacheDir, f)).size, 0);
  t.ok(kept > 0 && kept <= 4 << 20, `part of the blobs stayed for the next attempt (${kept} bytes)`);

  await registry.start();
  proxy.reset();
  const second = await jsonAsync<PullJson>(host2, 'image', 'pull', `${proxy.host}/big:1`);
  t.equal(second.id, pushed.configDigest, 'the resumed pull lands the image');
  t.equal(proxy.blobBytes, total - kept, `only the missing bytes moved: ${proxy.blobBytes} = ${total} - ${kept}`);
  t.ok(proxy.ranges.some((r) => /^bytes=[1-9]\d*-$/.test(r)), `the download resumed with Range (${proxy.ranges.join(', ')})`);
  t.same(listDir(cacheDir), [], 'and the cache is empty afterwards');
});

t.test('htpasswd auth: login checks and stores credentials 0600; the password never shows in ps or logs', async (t) => {
  const s = new Scratch(t, 'registry-auth');
  const password = `pw-${randomBytes(9).toString('hex')}`;
  const registry = new RealRegistry(t, s.mkdir('registry'), { user: 'alice', password });
  await registry.start();
  const layerDir = s.mkdir('small');
  fs.writeFileSync(path.join(layerDir, 'secret-plans'), 'nothing here\n');
  const layout = s.path('layout');
  writeOciLayout(layout, [fs.readFileSync(tarDir(layerDir, s.path('small.tar')))], 'x');
  const root = s.path('root');
  const env = { ...process.env, STRATA_LOG_LEVEL: 'trace' };
  const outputs: string[] = [];
  const cli = (args: string[], input?: string) => {
    const r = run(process.execPath, [strataJs, '--root', root, ...args], { env, input });
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  cli(['image', 'import', layout, '--name', 'busybox:1.0']);

  const denied = cli(['image', 'push', 'busybox:1.0', `${registry.host}/private:1`]);
  t.equal(denied.status, 1);
  t.match(denied.stderr, /STRATA_REGISTRY_AUTH: push 127\.0\.0\.1:\d+\/private:1: checking blob sha256:[0-9a-f]{64}: 127\.0\.0\.1:\d+ wants a user name and password; run "strata login/, 'without credentials: a clear auth error');

  const wrong = cli(['login', registry.host, '-u', 'alice', '--password-stdin'], 'not-the-password\n');
  t.equal(wrong.status, 1);
  t.match(wrong.stderr, /STRATA_REGISTRY_AUTH: login 127\.0\.0\.1:\d+: checking the API \(\/v2\/\): the registry answered 401/, 'a wrong password is refused by the registry');
  t.notOk(fs.existsSync(path.join(root, 'registry-auth.json')), 'and nothing is stored');

  // The password goes in on stdin while the command runs: it is never in its argv.
  const login = spawn(process.execPath, [strataJs, '--root', root, 'login', registry.host, '-u', 'alice', '--password-stdin'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let loginOut = '';
  login.stdout.setEncoding('utf8').on('data', (d: string) => { loginOut += d; });
  login.stderr.setEncoding('utf8').on('data', (d: string) => { loginOut += d; });
  const cmdline = fs.readFileSync(`/proc/${login.pid}/cmdline`, 'utf8');
  const ps = run('ps', ['-eo', 'args']).stdout;
  login.stdin.end(`${password}\n`);
  const code = await new Promise<number | null>((resolve) => login.on('exit', resolve));
  outputs.push(loginOut);
  t.equal(code, 0, `login succeeds: ${loginOut}`);
  t.match(loginOut, /Login Succeeded/);
  t.notMatch(cmdline, password, 'the password is not in the command line');
  t.notMatch(ps, password, 'nor anywhere in ps output');
  const authFile = path.join(root, 'registry-auth.json');
  t.equal(fs.statSync(authFile).mode & 0o777, 0o600, 'credentials are stored 0600');
  const stored = JSON.parse(fs.readFileSync(authFile, 'utf8')) as { auths: Record<string, { auth: string }> };
  t.equal(Buffer.from(stored.auths[registry.host]!.auth, 'base64').toString(), `alice:${password}`, 'in docker config.json format');

  const pushed = cli(['--json', 'image', 'push', 'busybox:1.0', `${registry.host}/private:1`]);
  t.equal(pushed.status, 0, `push with credentials: ${pushed.stderr}`);
  const root2 = s.path('root2');
  fs.mkdirSync(root2);
  fs.copyFileSync(authFile, path.join(root2, 'registry-auth.json'));
  const pulled = run(process.execPath, [strataJs, '--root', root2, 'image', 'pull', `${registry.host}/private:1`], { env });
  outputs.push(pulled.stdout, pulled.stderr);
  t.equal(pulled.status, 0, `pull with credentials: ${pulled.stderr}`);
  t.ok(pulled.stderr.includes('"level":') || pulled.stderr === '', 'trace logging was on');

  // skopeo reads the same file.
  runOk('skopeo', ['inspect', '--tls-verify=false', '--authfile', authFile, `docker://${registry.host}/private:1`]);

  const logout = cli(['logout', registry.host]);
  t.match(logout.stdout, /Removed login credentials/);
  const after = cli(['image', 'pull', `${registry.host}/private:1`]);
  t.match(after.stderr, /STRATA_REGISTRY_AUTH/, 'after logout the registry refuses again');

  // The same through a daemon: login, pull and push go over the control API; its debug log stays clean too.
  const daemon = await startDaemon(t, { root: s.path('daemon-root'), socket: s.path('strata.sock'), execStart: [process.execPath, path.join(repoRoot, 'dist/daemon/stratad.js')] });
  const viaDaemon = (args: string[], input?: string) => {
    const r = run(process.execPath, [strataJs, '--socket', daemon.socket, ...args], { env, input });
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  t.equal(viaDaemon(['login', registry.host, '-u', 'alice', '--password-stdin'], `${password}\n`).status, 0, 'login through the daemon');
  t.equal(fs.statSync(path.join(daemon.root, 'registry-auth.json')).mode & 0o777, 0o600, 'stored 0600 in the daemon\'s state dir');
  const daemonPull = viaDaemon(['--json', 'image', 'pull', `${registry.host}/private:1`]);
  t.equal(daemonPull.status, 0, `pull through the daemon: ${daemonPull.stderr}`);
  t.equal((JSON.parse(daemonPull.stdout) as PullJson).id, (JSON.parse(pushed.stdout) as PushJson).configDigest, 'the daemon pulled the pushed image');
  const daemonPush = viaDaemon(['--json', 'image', 'push', `${registry.host}/private:1`, `${registry.host}/again:1`]);
  t.equal(daemonPush.status, 0, `push through the daemon: ${daemonPush.stderr}`);
  t.same((JSON.parse(daemonPush.stdout) as PushJson).layers.map((l) => l.action), ['mounted'], 'which mounts the blob into the other repository');
  await daemon.kill('SIGTERM');
  outputs.push(daemon.stderr);
  t.ok(daemon.stderr.includes('"level":20'), 'the daemon logged at debug level');

  const all = outputs.join('\n') + fs.readFileSync(registry.logFile, 'utf8');
  t.notOk(all.includes(password), 'the password appears in no output or log');
  t.notOk(all.includes(Buffer.from(`alice:${password}`).toString('base64')), 'nor its base64');
});

// ------------------------------------------------------------------ a registry that misbehaves

interface FakeImage { manifest: Buffer; config: Buffer; layer: Buffer; configDigest: string; layerDigest: string; second?: { layer: Buffer; digest: string } }

function sha(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/**
 * A one-layer image: a small file, and `bigFile` bytes of random data besides; `wrongDiffID`: a config that lies;
 * `secondLayer`: a second layer on top (a small file); `prettyConfig`: the config indented, as JSON.stringify
 * would not write it.
 */
function fakeImage(s: Scratch, options: { name?: string; bigFile?: number; wrongDiffID?: boolean; secondLayer?: boolean; prettyConfig?: boolean } = {}): FakeImage {
  const name = options.name ?? 'fake';
  const dir = s.mkdir(`${name}-layer`);
  fs.writeFileSync(path.join(dir, 'hello'), `hello from a ${name} registry\n`);
  if (options.bigFile !== undefined) fs.writeFileSync(path.join(dir, 'big.bin'), randomBytes(options.bigFile));
  const layer = fs.readFileSync(tarDir(dir, s.path(`${name}.tar`)));
  const layers = [layer];
  if (options.secondLayer === true) {
    const dir2 = s.mkdir(`${name}-layer2`);
    fs.writeFileSync(path.join(dir2, 'second'), 'the second layer\n');
    layers.push(fs.readFileSync(tarDir(dir2, s.path(`${name}-2.tar`))));
  }
  const diffIDs = layers.map((l) => (options.wrongDiffID === true ? sha(Buffer.concat([l, Buffer.from('x')])) : sha(l)));
  const configValue = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIDs } };
  const config = Buffer.from(options.prettyConfig === true ? `${JSON.stringify(configValue, null, 2)}\n` : JSON.stringify(configValue));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(l), size: l.length })),
  }));
  const second = layers[1] === undefined ? undefined : { layer: layers[1], digest: sha(layers[1]) };
  return { manifest, config, layer, configDigest: sha(config), layerDigest: sha(layer), second };
}

type Mode = 'ok' | 'wrong-digest' | 'wrong-digest-header' | 'truncated' | 'status-401' | 'status-403' | 'status-404' | 'status-429' | 'status-500' | 'huge-manifest' | 'bearer'
  // Blob downloads: the layer answers 404; has more bytes than the manifest says; answers a Range with the wrong
  // range; is redirected to a storage server on another port (behind the Bearer handshake); stalls after 1 KiB
  // while the second layer answers 404.
  | 'blob-404' | 'too-long' | 'bad-range' | 'bearer-redirect' | 'stall';

async function fakeRegistry(t: Test, image: FakeImage) {
  const state = { mode: 'ok' as Mode, tokenRequests: [] as Array<{ auth?: string; query: string }>, storageRequests: [] as Array<{ auth?: string }>, ranges: [] as string[] };
  const port = await freePort();
  // Where 'bearer-redirect' sends the layer: another origin, which must never see the registry's credentials.
  const storage = http.createServer((req, res) => {
    state.storageRequests.push({ auth: req.headers.authorization });
    res.writeHead(200, { 'content-length': image.layer.length }).end(image.layer);
  });
  const storagePort = await freePort();
  await new Promise<void>((resolve) => storage.listen(storagePort, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { storage.closeAllConnections(); storage.close(() => resolve()); }));
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', `http://127.0.0.1:${port}`);
    if (url.pathname === '/token') {
      state.tokenRequests.push({ auth: req.headers.authorization, query: url.search });
      if (req.headers.authorization !== `Basic ${Buffer.from('bob:secret').toString('base64')}`) return void res.writeHead(401).end();
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'good-token' }));
    }
    if ((state.mode === 'bearer' || state.mode === 'bearer-redirect') && req.headers.authorization !== 'Bearer good-token') {
      return void res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="fake",scope="repository:app:pull"`, 'content-type': 'application/json' })
        .end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
    }
    const status = /^status-(\d+)$/.exec(state.mode);
    if (status !== null && url.pathname.includes('/manifests/')) {
      return void res.writeHead(Number(status[1]), { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'TEST', message: `injected ${status[1]}` }] }));
    }
    if (url.pathname === '/v2/app/manifests/1') {
      const body = state.mode === 'huge-manifest' ? Buffer.alloc(5 << 20, 0x20) : image.manifest;
      return void res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': body.length }).end(body);
    }
    if (url.pathname === `/v2/app/blobs/${image.configDigest}`) return void res.writeHead(200, { 'content-length': image.config.length }).end(image.config);
    if (image.second !== undefined && url.pathname === `/v2/app/blobs/${image.second.digest}`) {
      const second = image.second.layer;
      if (state.mode === 'stall') return void setTimeout(() => res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'gone' }] })), 300);
      return void res.writeHead(200, { 'content-length': second.length }).end(second);
    }
    if (url.pathname === `/v2/app/blobs/${image.layerDigest}`) {
      if (req.headers.range !== undefined) state.ranges.push(req.headers.range);
      if (state.mode === 'blob-404') return void res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] }));
      if (state.mode === 'too-long') {
        const long = Buffer.concat([image.layer, Buffer.alloc(100)]);
        return void res.writeHead(200, { 'content-length': long.length }).end(long);
      }
      if (state.mode === 'bad-range' && req.headers.range !== undefined) {
        return void res.writeHead(206, { 'content-length': image.layer.length, 'content-range': `bytes 0-${image.layer.length - 1}/${image.layer.length}` }).end(image.layer);
      }
      if (state.mode === 'bearer-redirect') return void res.writeHead(307, { location: `http://127.0.0.1:${storagePort}/blob?signature=x` }).end();
      if (state.mode === 'stall') {
        res.writeHead(200, { 'content-length': image.layer.length });
        return void res.write(image.layer.subarray(0, 1024));
      }
      if (state.mode === 'wrong-digest' || state.mode === 'wrong-digest-header') {
        const bad = Buffer.from(image.layer);
        const at = state.mode === 'wrong-digest' ? 600 : 100; // file data, or the first header's mode field
        bad[at] = bad[at]! ^ 0xff;
        return void res.writeHead(200, { 'content-length': bad.length }).end(bad);
      }
      if (state.mode === 'truncated') {
        res.writeHead(200, { 'content-length': image.layer.length });
        res.write(image.layer.subarray(0, 1024));
        return void setTimeout(() => res.destroy(), 20);
      }
      return void res.writeHead(200, { 'content-length': image.layer.length }).end(image.layer);
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'NOT_FOUND', message: 'no such thing' }] }));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }));
  return { host: `127.0.0.1:${port}`, state };
}

t.test('bad input: each failure names the ref and the step, and nothing half-pulled is visible', async (t) => {
  const s = new Scratch(t, 'registry-bad');
  const image = fakeImage(s);
  const fake = await fakeRegistry(t, image);
  const ref = `${fake.host}/app:1`;
  const root = s.path('root');
  const cases: Array<[Mode, RegExp]> = [
    ['wrong-digest', /STRATA_DIGEST_MISMATCH: pull 127\.0\.0\.1:\d+\/app:1: fetching blob sha256:[0-9a-f]{64}: the registry served \d+ bytes with digest sha256:/],
    // The layer is extracted while it downloads: a blob whose tar breaks early is still told as the wrong digest.
    ['wrong-digest-header', /STRATA_DIGEST_MISMATCH: pull 127\.0\.0\.1:\d+\/app:1: fetching blob sha256:[0-9a-f]{64}: the registry served \d+ bytes with digest sha256:/],
    ['truncated', /STRATA_REGISTRY_FAILED: pull 127\.0\.0\.1:\d+\/app:1: fetching blob sha256:[0-9a-f]{64}: the connection broke off after 1024 bytes/],
    ['status-401', /STRATA_REGISTRY_AUTH: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1: the registry answered 401/],
    ['status-403', /STRATA_REGISTRY_AUTH: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1: the registry answered 403 Forbidden \(TEST: injected 403\): this user may not do that/],
    ['status-404', /STRATA_NOT_FOUND: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1: the registry answered 404/],
    ['status-429', /STRATA_REGISTRY_FAILED: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1: the registry answered 429 Too Many Requests \(TEST: injected 429\): too many requests/],
    ['status-500', /STRATA_REGISTRY_FAILED: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1: the registry answered 500 Internal Server Error \(TEST: injected 500\)/],
    ['huge-manifest', /STRATA_BAD_ARCHIVE: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1: the manifest is larger than the 4194304-byte limit/],
  ];
  for (const [mode, message] of cases) {
    fake.state.mode = mode;
    const r = await strataAsync(root, 'image', 'pull', ref);
    t.equal(r.status, 1, `${mode}: the pull fails`);
    t.match(r.stderr, message, `${mode}: ${r.stderr.trim()}`);
    assertNothingLanded(t, root, mode, false);
  }
  assertNothingLanded(t, root, 'after every failure');
  const cache = path.join(root, 'registry-cache', 'blobs');
  t.same(listDir(cache).filter((f) => !f.endsWith('.partial')), [], 'no unverified blob is kept under a final name');
  t.notOk(fs.existsSync(path.join(cache, `sha256-${image.layerDigest.slice(7)}.partial`)) && fs.statSync(path.join(cache, `sha256-${image.layerDigest.slice(7)}.partial`)).size > 1024, 'a wrong blob is not kept for resuming');

  const bad = strata(root, 'image', 'pull', 'UPPER/case');
  t.match(bad.stderr, /STRATA_BAD_OPTION: "UPPER\/case" is not an image reference/, 'a malformed reference is refused before any request');
  // Plain HTTP only for loopback and configured registries (checked without touching any other address).
  t.ok(usesPlainHttp('127.0.0.5:5000', []) && usesPlainHttp('localhost:5000', []) && usesPlainHttp('[::1]:5000', []), 'loopback is plain HTTP');
  t.notOk(usesPlainHttp('registry.example.com:5000', []), 'any other registry is HTTPS');
  t.ok(usesPlainHttp('registry.example.com:5000', ['registry.example.com:5000']), 'unless insecureRegistries lists it');

  // The Bearer handshake: 401 with a challenge, a token fetched with Basic credentials, then the real request.
  fake.state.mode = 'bearer';
  const anonymous = await strataAsync(root, 'image', 'pull', ref);
  t.match(anonymous.stderr, /STRATA_REGISTRY_AUTH: pull 127\.0\.0\.1:\d+\/app:1: fetching manifest app:1 \(getting a token from 127\.0\.0\.1:\d+\): the registry answered 401/, 'no credentials: the token service refuses');
  fs.writeFileSync(path.join(root, 'registry-auth.json'), JSON.stringify({ auths: { [fake.host]: { auth: Buffer.from('bob:secret').toString('base64') } } }), { mode: 0o600 });
  const withToken = await jsonAsync<PullJson>(root, 'image', 'pull', ref);
  t.equal(withToken.id, image.configDigest, 'with credentials the token handshake succeeds and the image lands');
  const last = fake.state.tokenRequests.at(-1)!;
  t.match(last.query, /service=fake/, 'the token request names the service');
  t.match(decodeURIComponent(last.query), /scope=repository:app:pull/, 'and the scope');
  fs.chmodSync(path.join(root, 'registry-auth.json'), 0o644);
  t.match((await strataAsync(root, 'image', 'pull', ref)).stderr, /STRATA_BAD_OPTION: credentials file .* has mode 644; it must not be readable by group or others/, 'a credentials file others can read is refused');
});

/** The bar of the 270 KiB first layer, once done: "0eddaed91a74 (1/2) [████] done   270.0 KiB/270.0 KiB". */
const PULL_BAR = /[0-9a-f]{12} \(1\/2\) \[█+\] done +270\.0 KiB\/270\.0/;

t.test('blob downloads (native, libcurl): errors, ranges, redirects without credentials, a stop, a full disk', async (t) => {
  const s = new Scratch(t, 'registry-blobs');
  const image = fakeImage(s, { bigFile: 256 << 10, secondLayer: true });
  const fake = await fakeRegistry(t, image);
  const ref = `${fake.host}/app:1`;
  const layerHex = image.layerDigest.slice(7);
  const partialOf = (root: string) => path.join(root, 'registry-cache', 'blobs', `sha256-${layerHex}.partial`);
  const seedPartial = (root: string, bytes: number) => {
    fs.mkdirSync(path.dirname(partialOf(root)), { recursive: true });
    fs.writeFileSync(partialOf(root), image.layer.subarray(0, bytes));
  };

  // An error answer to the blob GET: its status and the registry's error code are quoted.
  fake.state.mode = 'blob-404';
  let root = s.path('root-404');
  let r = await strataAsync(root, 'image', 'pull', ref);
  t.match(r.stderr, /STRATA_NOT_FOUND: pull 127\.0\.0\.1:\d+\/app:1: fetching blob sha256:[0-9a-f]{64}: the registry answered 404 Not Found \(BLOB_UNKNOWN: blob unknown to registry\)/, `a 404 for a blob: ${r.stderr.trim()}`);
  assertNothingLanded(t, root, 'blob-404');

  // More bytes than the manifest says: stopped at the size, and nothing kept.
  fake.state.mode = 'too-long';
  root = s.path('root-long');
  r = await strataAsync(root, 'image', 'pull', ref);
  t.match(r.stderr, new RegExp(`STRATA_DIGEST_MISMATCH: .*fetching blob ${image.layerDigest}: the registry sent more than the ${image.layer.length} bytes the manifest says`), `too many bytes: ${r.stderr.trim()}`);
  t.notOk(fs.existsSync(partialOf(root)), 'what arrived of an oversized blob is not kept for resuming');
  assertNothingLanded(t, root, 'too-long');

  // A resume against a registry that ignores Range (200, the whole blob): the bytes already held are skipped.
  fake.state.mode = 'ok';
  root = s.path('root-norange');
  seedPartial(root, 100_000);
  const resumed = await jsonAsync<PullJson>(root, 'image', 'pull', ref);
  t.equal(resumed.id, image.configDigest, 'the pull that resumed lands the image');
  t.ok(fake.state.ranges.includes('bytes=100000-'), `it asked for the rest (${fake.state.ranges.join(', ')})`);
  t.same(fs.readFileSync(path.join(await lowerDirsOf(root, ref).then((d) => d.at(-1)!), 'big.bin')), fs.readFileSync(s.path('fake-layer', 'big.bin')), 'and the layer is whole');

  // On a terminal, the pull draws a bar per layer, fed from the native download's progress.
  root = s.path('root-tty');
  const onTty = await new Promise<string>((resolve, reject) => {
    const child = spawn('script', ['-qec', `${process.execPath} ${strataJs} --root ${root} image pull ${ref}`, '/dev/null'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.on('error', reject);
    child.on('close', () => resolve(out));
  });
  t.match(onTty, PULL_BAR, `a tty shows a bar per layer: ${JSON.stringify(onTty.slice(-400))}`);

  // A 206 that does not start where the file ends: refused, the partial bytes kept.
  fake.state.mode = 'bad-range';
  root = s.path('root-badrange');
  seedPartial(root, 100_000);
  r = await strataAsync(root, 'image', 'pull', ref);
  t.match(r.stderr, /STRATA_REGISTRY_FAILED: .*asked for bytes from 100000, the registry sent range "bytes 0-\d+\/\d+" \(100000 of \d+ bytes kept for the next attempt\)/, `a wrong range: ${r.stderr.trim()}`);
  t.equal(fs.statSync(partialOf(root)).size, 100_000, 'the partial file is unchanged');

  // Behind the Bearer handshake, the blob redirected to another origin: fetched there, without credentials.
  fake.state.mode = 'bearer-redirect';
  root = s.path('root-redirect');
  fs.mkdirSync(root, { recursive: true });
  fs.writeFileSync(path.join(root, 'registry-auth.json'), JSON.stringify({ auths: { [fake.host]: { auth: Buffer.from('bob:secret').toString('base64') } } }), { mode: 0o600 });
  const redirected = await jsonAsync<PullJson>(root, 'image', 'pull', ref);
  t.equal(redirected.id, image.configDigest, 'the redirected pull lands the image');
  t.equal(fake.state.storageRequests.length, 1, 'the layer came from the storage server');
  t.equal(fake.state.storageRequests[0]?.auth, undefined, 'which got no Authorization header');

  // One layer stalls, the other fails: the pull ends with the failure at once, and the stalled download stops
  // (else it would wait out the 60 s dead-connection timeout, three times) with its bytes kept.
  fake.state.mode = 'stall';
  root = s.path('root-stall');
  r = await strataAsync(root, 'image', 'pull', ref);
  t.match(r.stderr, /STRATA_NOT_FOUND: .*fetching blob sha256:[0-9a-f]{64}: the registry answered 404 Not Found \(BLOB_UNKNOWN: gone\)/, `the failure is the one reported: ${r.stderr.trim()}`);
  t.equal(fs.statSync(partialOf(root)).size, 1024, 'the stopped download kept what arrived');
  assertNothingLanded(t, root, 'stall');

  // The download cache on a full disk: ENOSPC, named, and nothing lands.
  fake.state.mode = 'ok';
  root = s.mkdir('root-full');
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', root], { encoding: 'utf8' });
  t.equal(mounted.status, 0, `a 1 MiB tmpfs for the state dir ${mounted.stderr}`);
  t.teardown(() => { spawnSync('umount', [root]); });
  const big = fakeImage(s, { name: 'big', bigFile: 2 << 20 });
  const bigRegistry = await fakeRegistry(t, big);
  r = await strataAsync(root, 'image', 'pull', `${bigRegistry.host}/app:1`);
  t.match(r.stderr, /ENOSPC: pull 127\.0\.0\.1:\d+\/app:1: fetching blob sha256:[0-9a-f]{64}: cannot write the download cache .*\.partial: ENOSPC \(write\)/, `a full disk: ${r.stderr.trim()}`);
  t.notOk(fs.existsSync(path.join(root, 'registry-cache', 'blobs', `sha256-${big.layerDigest.slice(7)}.partial`)), 'the partial blob is deleted, giving the space back');
  assertNothingLanded(t, root, 'full disk');
});

t.test('a pulled image travels on as it came: packed blobs and the config bytes are pushed unchanged', async (t) => {
  const s = new Scratch(t, 'registry-relay');
  const image = fakeImage(s, { bigFile: 64 << 10, prettyConfig: true });
  const fake = await fakeRegistry(t, image);
  const registry = new RealRegistry(t, s.mkdir('registry'));
  await registry.start();
  const root = s.path('root');
  const pulled = await jsonAsync<PullJson>(root, 'image', 'pull', `${fake.host}/app:1`);
  t.equal(pulled.id, image.configDigest, 'pulled; the id is the digest of the indented config');
  const inspect = (r: string, ref: string) => json<Array<{ packedLayers: number; rawConfig?: string }>>(r, 'image', 'inspect', ref)[0]!;
  t.equal(inspect(root, pulled.id).packedLayers, 1, 'the layer is stored packed');
  t.equal(inspect(root, pulled.id).rawConfig, undefined, 'inspect does not show the raw config');

  const pushed = json<PushJson>(root, 'image', 'push', pulled.id, `${registry.host}/relay:1`);
  t.equal(pushed.configDigest, image.configDigest, 'the pushed config has the image id as its digest');
  t.same(pushed.layers.map((l) => [l.digest, l.action]), [[image.layerDigest, 'uploaded']], 'the layer went up as the blob it came as');
  t.equal(inspect(root, pulled.id).packedLayers, 1, 'and was not extracted for it');
  const config = await httpRequest(registry.port, 'GET', `/v2/relay/blobs/${image.configDigest}`, {});
  t.equal(config.body, image.config.toString('utf8'), 'the registry holds the config byte for byte');

  const again = s.path('again');
  const back = json<PullJson>(again, 'image', 'pull', `${registry.host}/relay:1`);
  t.equal(back.id, image.configDigest, 'pulled back elsewhere, the image keeps its id');
  t.same(back.layers.map((l) => l.digest), [image.layerDigest], 'and its layer digest');
  t.equal(strata(again, 'image', 'export', back.id, '--format', 'oci', '-o', s.path('out')).status, 0, 'it exports (extracting the layer)');
});

t.test('packed layers: stratad extracts them in the background, also after kill -9; a lying config fails the first use', async (t) => {
  const s = new Scratch(t, 'registry-packed');
  const good = fakeImage(s, { name: 'good', bigFile: 24 << 20 });
  const goodRegistry = await fakeRegistry(t, good);
  const daemon = await startDaemon(t, { root: s.path('root'), socket: s.path('strata.sock'), execStart: [process.execPath, path.join(repoRoot, 'dist/daemon/stratad.js')] });
  const layersOf = () => daemon.json<Array<{ chainID: string; diffID: string; packed: boolean; size: number }>>(['layer', 'ls']);

  // The pull returns once the blob is stored; stratad is killed at once, before, while or after it extracts.
  // Async: the fake registry answers from this process.
  const pullViaDaemon = (ref: string) => new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [strataJs, '--socket', daemon.socket, '--json', 'image', 'pull', ref], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
  const pull = await pullViaDaemon(`${goodRegistry.host}/app:1`);
  t.equal(pull.status, 0, `pull through the daemon: ${pull.stderr}`);
  t.equal((JSON.parse(pull.stdout) as PullJson).id, good.configDigest, 'the image landed');
  await daemon.kill('SIGKILL');
  await daemon.start();
  await waitFor('the background extraction', () => layersOf().every((l) => !l.packed) || undefined, 60_000);
  const [layer] = layersOf();
  t.ok(layer !== undefined && layer.size > 24 << 20, `the restarted daemon extracted the layer (${layer?.size} bytes)`);
  t.same(listDir(path.join(daemon.root, 'layer-blobs')), [], 'its blob is deleted');
  t.same(listDir(path.join(daemon.root, 'layer-tmp')), [], 'nothing is left staged');
  const mnt = s.mkdir('mnt');
  const created = daemon.cli(['mount', 'create', `${goodRegistry.host}/app:1`, '--target', mnt, '--name', 'good']);
  t.equal(created.status, 0, `the pulled image mounts: ${created.stderr}`);
  try {
    t.equal(fs.readFileSync(path.join(mnt, 'hello'), 'utf8'), 'hello from a good registry\n', 'its file reads through the mount');
    t.equal(sha(fs.readFileSync(path.join(mnt, 'big.bin'))), sha(fs.readFileSync(path.join(s.path('good-layer'), 'big.bin'))), 'the big file is whole');
  } finally {
    t.equal(daemon.cli(['mount', 'rm', 'good']).status, 0, 'mount rm');
  }

  // A config whose diffID is not the blob's tar: the blob matches the manifest, so the pull lands; its extraction
  // (in the background, and again at mount create) refuses it, and nothing extracted is kept.
  const bad = fakeImage(s, { name: 'bad', wrongDiffID: true });
  const badRegistry = await fakeRegistry(t, bad);
  const badPull = await pullViaDaemon(`${badRegistry.host}/app:1`);
  t.equal(badPull.status, 0, `the lying image is pulled: ${badPull.stderr}`);
  await daemon.waitForLog(/could not extract a packed layer/);
  const badTarget = s.mkdir('mnt-bad');
  const refused = daemon.cli(['mount', 'create', `${badRegistry.host}/app:1`, '--target', badTarget, '--name', 'bad']);
  t.equal(refused.status, 1, 'mount create of it fails');
  t.match(refused.stderr, /STRATA_DIGEST_MISMATCH: layer sha256:[0-9a-f]{64} \(blob sha256:[0-9a-f]{64}\): uncompressed tar has diffID sha256:[0-9a-f]{64}, the image config says sha256:/, `and says why: ${refused.stderr.trim()}`);
  t.same(daemon.json<unknown[]>(['mount', 'ls']), [], 'no mount is left');
  t.ok(layersOf().some((l) => l.packed), 'the layer stays packed');
  t.same(listDir(path.join(daemon.root, 'layer-tmp')), [], 'nothing is left staged');
  t.equal(daemon.cli(['image', 'rm', `${badRegistry.host}/app:1`]).status, 0, 'image rm');
  t.equal(daemon.cli(['layer', 'prune']).status, 0, 'layer prune');
  t.same(listDir(path.join(daemon.root, 'layer-blobs')), [], 'prune deletes the packed blob');
  await daemon.kill('SIGTERM');
  t.match(daemon.stderr, /"stopped"/, 'the daemon stops cleanly');
});

t.test('packed layers: a background extraction that failed on a full disk is tried again after the next pull', async (t) => {
  const s = new Scratch(t, 'registry-unpack-retry');
  const root = s.mkdir('root');
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'tmpfs', root], { encoding: 'utf8' });
  t.equal(mounted.status, 0, `a 64 MiB tmpfs for the state dir ${mounted.stderr}`);
  t.teardown(() => { spawnSync('umount', ['-l', root]); });
  const big = fakeImage(s, { name: 'big', bigFile: 16 << 20 });
  const bigRegistry = await fakeRegistry(t, big);
  const small = fakeImage(s, { name: 'small' });
  const smallRegistry = await fakeRegistry(t, small);
  const daemon = await startDaemon(t, { root, socket: s.path('strata.sock'), execStart: [process.execPath, path.join(repoRoot, 'dist/daemon/stratad.js')] });
  const packed = () => daemon.json<Array<{ diffID: string; packed: boolean }>>(['layer', 'ls']).filter((l) => l.packed).map((l) => l.diffID);

  // Room for the 16 MiB blob, not for the blob and its extracted copy besides.
  const free = () => { const st = fs.statfsSync(root); return st.bavail * st.bsize; };
  const filler = path.join(root, 'filler');
  fs.writeFileSync(filler, Buffer.alloc(Math.max(0, free() - (24 << 20))));
  const first = await strataAsync(root, '--socket', daemon.socket, 'image', 'pull', `${bigRegistry.host}/app:1`);
  t.equal(first.status, 0, `the pull lands on the nearly full disk: ${first.stderr}`);
  await daemon.waitForLog(/could not extract a packed layer.*ENOSPC|ENOSPC.*could not extract a packed layer/);
  t.match(daemon.stderr, /"retry":"after the next pull"/, 'the log says it will be tried again');
  t.same(packed(), [sha(big.layer)], 'the layer stays packed');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'the failed extraction left nothing staged');

  fs.rmSync(filler);
  const second = await strataAsync(root, '--socket', daemon.socket, 'image', 'pull', `${smallRegistry.host}/app:1`);
  t.equal(second.status, 0, `another pull: ${second.stderr}`);
  await waitFor('both layers extracted', () => packed().length === 0 || undefined, 60_000);
  t.pass('after the next pull, the background extracted the layer it had given up on');
  await daemon.kill('SIGTERM');
});

t.test('packed layers after a crash: start-up deletes a blob whose layer is extracted, keeps an unrecorded one in lost+found; export extracts', async (t) => {
  const s = new Scratch(t, 'registry-packed-recovery');
  const image = fakeImage(s);
  const fake = await fakeRegistry(t, image);
  const root = s.path('root');
  // A cached download damaged on disk since it was verified (same size, other bytes) is fetched again.
  const cached = path.join(root, 'registry-cache', 'blobs');
  fs.mkdirSync(cached, { recursive: true });
  fs.writeFileSync(path.join(cached, `sha256-${image.layerDigest.slice(7)}`), Buffer.alloc(image.layer.length, 0x55));
  const pulled = await jsonAsync<PullJson>(root, 'image', 'pull', `${fake.host}/app:1`);
  t.equal(pulled.downloadedBytes, image.layer.length, 'a damaged cached blob is downloaded again, in the same pull');
  const blobs = path.join(root, 'layer-blobs');
  const [blobName] = listDir(blobs);
  const blobBytes = fs.readFileSync(path.join(blobs, blobName!));
  const exported = strata(root, 'image', 'export', `${fake.host}/app:1`, '-o', s.path('exported'));
  t.equal(exported.status, 0, `an export of the packed image extracts it first: ${exported.stderr}`);
  t.same(json<Array<{ packed: boolean }>>(root, 'layer', 'ls').map((l) => l.packed), [false], 'the layer is extracted');
  t.same(listDir(blobs), [], 'extracted, the blob is gone');

  // A layer import of the same tar into a store that holds it packed: the extracted copy replaces the blob.
  const other = s.path('other');
  await jsonAsync<PullJson>(other, 'image', 'pull', `${fake.host}/app:1`);
  t.equal(listDir(path.join(other, 'layer-blobs')).length, 1, 'pulled packed into a second store');
  const sameTar = s.path('same-layer.tar');
  fs.writeFileSync(sameTar, image.layer);
  const imported = strata(other, 'layer', 'import', sameTar);
  t.equal(imported.status, 0, `importing the same layer: ${imported.stderr}`);
  t.same(json<Array<{ packed: boolean; size: number }>>(other, 'layer', 'ls').map((l) => [l.packed, l.size > 0]), [[false, true]], 'the layer is now extracted, stored once');
  t.same(listDir(path.join(other, 'layer-blobs')), [], 'and its blob deleted');
  t.same(listDir(path.join(other, 'layer-tmp')), [], 'with nothing left staged');
  // What a crash between the extraction's commit and the blob's deletion leaves, and a blob nothing names.
  const leaveDebris = () => {
    fs.writeFileSync(path.join(blobs, blobName!), blobBytes);
    fs.writeFileSync(path.join(blobs, 'feedfacecafe'), 'not a layer anyone knows');
  };
  const logger = createLogger({ level: 'silent' });
  const metastore = await Metastore.open(path.join(root, 'db'), logger);
  try {
    const { layers } = await openImageServices(metastore, root, logger);
    leaveDebris();
    const problems = await layers.fsck(false);
    t.same(problems.map((p) => p.problem).sort(), ['no packed layer record names this blob', 'the blob of a layer already extracted was not deleted'], 'fsck finds both');
    await layers.fsck(true);
    t.same(listDir(blobs), [], 'fsck --repair deletes the leftover and moves the unknown blob away');
  } finally {
    await metastore.close();
  }
  leaveDebris();
  await lowerDirsOf(root, `${fake.host}/app:1`); // opening the store runs recovery
  t.same(listDir(blobs), [], 'so does start-up recovery');
  const lost = await new LostAndFound(root, createLogger({ level: 'silent' })).listLost();
  t.same(lost.map((e) => e.Kind), ['layer-blob', 'layer-blob'], `the unknown blobs are in lost+found as layer blobs (${lost.map((e) => e.Name).join(', ')})`);
  t.equal(fs.readFileSync(path.join(await lowerDirsOf(root, `${fake.host}/app:1`).then((d) => d[0]!), 'hello'), 'utf8'), 'hello from a fake registry\n', 'the layer is intact');
});

function httpRequest(port: number, method: string, urlPath: string, headers: Record<string, string>, body?: Buffer): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers: { ...headers, ...(body ? { 'content-length': body.length } : {}) } }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => { text += d; }).on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
