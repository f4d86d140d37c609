/**
 * The image store end to end: a busybox-static image built by umoci (and re-encoded by skopeo as another OCI
 * layout and as a docker-save archive) is imported by the real `strata image` CLI, its chain is mounted by
 * kernel overlayfs, fuse-overlayfs and strata-overlay and compared, and busybox runs chrooted in it.
 * Also: the reference rules across images and mounts, a 128-layer chain, and hostile image layouts.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { openImageServices } from '../lib/images/service.js';
import { StoreLayerProvider } from '../lib/images/layer-provider.js';
import { chainIdsOf, type Digest } from '../lib/layers/digest.js';
import { createLogger } from '../lib/log.js';
import { Metastore } from '../lib/store/metastore.js';
import {
  Scratch, buildBusyboxOci, craftTar, describeTree, fuseOverlayKinds, listDir, readManifest, rewriteManifest, run, runOk,
  sha256Hex, strata, strataJs, strataJson, writeOciLayout,
} from './fixtures/store-fixtures.js';

interface ImageJson { id: string; names: string[]; manifestDigest: string | null; chainIDs: string[]; diffIDs: string[]; config: { rootfs: { diff_ids: string[] } } }
interface LayerJson { chainID: string; path: string; holders: string[] }

async function openServices(root: string) {
  const logger = createLogger({ level: 'silent' });
  const metastore = await Metastore.open(path.join(root, 'db'), logger);
  const services = await openImageServices(metastore, root, logger);
  return { ...services, provider: new StoreLayerProvider(services.images, services.layers), close: () => metastore.close() };
}

t.test('a busybox image from umoci and skopeo imports, mounts like the kernel does, and runs', async (t) => {
  const s = new Scratch(t, 'images-busybox');
  const layout = buildBusyboxOci(s);
  const root = s.path('root');

  const imported = strata(root, 'image', 'import', layout, '--name', 'busybox:1.0');
  t.equal(imported.status, 0, `image import: ${imported.stderr}`);
  t.equal(imported.stderr, '', 'nothing noisy on a non-TTY');
  const manifest = readManifest(layout);
  t.equal(imported.stdout.trim(), `${manifest.config.digest} busybox:1.0`, 'prints the image id (config digest) and name');

  const [image] = strataJson<ImageJson[]>(root, 'image', 'inspect', 'busybox:1.0');
  t.equal(image!.chainIDs.length, 2, 'two layers');
  t.same(image!.diffIDs, image!.config.rootfs.diff_ids, 'diffIDs as the config lists them (verified while extracting)');
  t.same(image!.chainIDs, chainIdsOf(image!.diffIDs as Digest[]), 'chainIDs per the OCI spec');
  t.equal(strataJson<ImageJson[]>(root, 'image', 'inspect', image!.manifestDigest!)[0]!.id, image!.id, 'resolvable by manifest digest');
  t.equal(strataJson<ImageJson[]>(root, 'image', 'inspect', image!.id.slice(7, 19))[0]!.id, image!.id, 'resolvable by short id');
  t.match(strata(root, 'image', 'ls').stdout, /busybox:1\.0\s+[0-9a-f]{12}\s+2\s/, 'image ls shows it');

  // The chain, top first, as the mount service gets it.
  const services = await openServices(root);
  const resolved = await services.provider.resolve('busybox:1.0');
  await services.close();
  t.equal(resolved.kind, 'image');
  t.equal(resolved.lowerDirs.length, 2, 'two lower dirs');
  t.same(resolved.layerIds, [...image!.chainIDs].reverse(), 'layer ids top first');

  // Expected tree: what umoci itself unpacks for the final image.
  const reference = s.path('reference');
  runOk('umoci', ['unpack', '--image', `${layout}:bb`, reference]);
  const expectedTree = describeTree(path.join(reference, 'rootfs'));

  const kernelMnt = s.path('mnt-kernel');
  s.mountOverlay('kernel', '/', resolved.lowerDirs.join(':'), kernelMnt);
  t.equal(describeTree(kernelMnt), expectedTree, 'kernel overlayfs view equals umoci\'s unpacked rootfs (types, modes, owners, sizes, links)');
  t.equal(run('diff', ['-r', '--no-dereference', path.join(reference, 'rootfs'), kernelMnt]).status, 0, 'and the same file contents');
  t.notOk(fs.existsSync(path.join(kernelMnt, 'bin/ls')), 'the whiteout hides /bin/ls');
  t.same(listDir(path.join(kernelMnt, 'opt/app/cache')), ['new'], 'the opaque dir hides the old cache');
  t.equal(fs.statSync(path.join(kernelMnt, 'bin/suidtool')).mode & 0o7777, 0o4755, 'setuid survives');
  const chrooted = run('chroot', [kernelMnt, '/bin/busybox', 'sh', '-c', 'cat /etc/motd; test -e /bin/ls || echo no-ls; ls /opt/app/cache']);
  t.equal(chrooted.stdout, 'hello from layer 2\nno-ls\nnew\n', `chroot busybox sh runs in the merged tree: ${chrooted.stderr}`);

  for (const kind of fuseOverlayKinds()) {
    const mnt = s.path(`mnt-${kind}`);
    const upper = { upper: s.mkdir(`upper-${kind}`), work: s.mkdir(`work-${kind}`) };
    s.mountOverlay(kind, '/', resolved.lowerDirs.join(':'), mnt, upper);
    t.equal(describeTree(mnt), expectedTree, `${kind} view equals the kernel's`);
    const r = run('chroot', [mnt, '/bin/busybox', 'sh', '-c', 'echo written > /etc/new && cat /etc/motd /etc/new && rm /bin/cat && ls /bin | wc -l']);
    t.equal(r.status, 0, `${kind}: chroot busybox sh works: ${r.stderr}`);
    t.match(r.stdout, /^hello from layer 2\nwritten\n\d+\n$/, `${kind}: writes go to the upper layer`);
    s.unmount(mnt);
    t.ok(fs.lstatSync(path.join(upper.upper, 'bin/cat')).isCharacterDevice(), `${kind}: deleting a lower file left a whiteout in the upper`);
    t.ok(fs.existsSync(path.join(resolved.lowerDirs[1]!, 'bin/cat')), `${kind}: the stored layer is untouched`);
  }
  s.unmount(kernelMnt);

  // skopeo re-encodes the image as another OCI layout and as a docker-save archive: same layers, stored once.
  const layoutCount = listDir(path.join(root, 'layers')).length;
  runOk('skopeo', ['copy', '--quiet', `oci:${layout}:bb`, `oci:${s.path('oci-skopeo')}:bb`]);
  runOk('skopeo', ['copy', '--quiet', `oci:${layout}:bb`, `docker-archive:${s.path('bb-docker.tar')}:busybox:2.0`]);
  const fromSkopeo = strata(root, 'image', 'import', s.path('oci-skopeo'), '--name', 'busybox:skopeo');
  t.equal(fromSkopeo.status, 0, `import skopeo's OCI layout: ${fromSkopeo.stderr}`);
  runOk('skopeo', ['copy', '--quiet', '--dest-compress', '--dest-compress-format', 'zstd', `oci:${layout}:bb`, `oci:${s.path('oci-zstd')}:bb`]);
  t.match(readManifest(s.path('oci-zstd')).layers[0]!.mediaType, /\+zstd$/, 'skopeo wrote zstd layers');
  const fromZstd = strata(root, 'image', 'import', s.path('oci-zstd'), '--name', 'busybox:zstd');
  t.equal(fromZstd.status, 0, `import skopeo's zstd OCI layout: ${fromZstd.stderr}`);
  t.same(strataJson<ImageJson[]>(root, 'image', 'inspect', 'busybox:zstd')[0]!.chainIDs, image!.chainIDs, 'zstd layers have the same chain');
  const fromArchive = strata(root, 'image', 'import', s.path('bb-docker.tar'));
  t.equal(fromArchive.status, 0, `import skopeo's docker-archive: ${fromArchive.stderr}`);
  t.match(fromArchive.stdout, /busybox:2\.0/, 'docker-archive RepoTags name the image');
  t.equal(listDir(path.join(root, 'layers')).length, layoutCount, 'no new layer content: every diffID is stored once');
  const [archived] = strataJson<ImageJson[]>(root, 'image', 'inspect', 'busybox:2.0');
  t.same(archived!.chainIDs, image!.chainIDs, 'the docker-archive image shares the chain');
});

t.test('references across images and mounts', async (t) => {
  const s = new Scratch(t, 'images-refs');
  const root = s.path('root');
  const base = await craftTar([{ name: 'bin/', type: 'directory' }, { name: 'bin/tool', data: 'tool' }]);
  const top = await craftTar([{ name: 'etc/', type: 'directory' }, { name: 'etc/conf', data: 'conf' }]);
  writeOciLayout(s.path('a'), [base, top], 'a');
  writeOciLayout(s.path('b'), [base], 'b');
  t.equal(strata(root, 'image', 'import', s.path('a'), '--name', 'app:a').status, 0, 'import app:a');
  t.equal(strata(root, 'image', 'import', s.path('b'), '--name', 'app:b').status, 0, 'import app:b');
  const baseChain = `sha256:${sha256Hex(base)}`;
  const [imgA] = strataJson<ImageJson[]>(root, 'image', 'inspect', 'app:a');
  const [imgB] = strataJson<ImageJson[]>(root, 'image', 'inspect', 'app:b');

  let r = strata(root, 'layer', 'rm', baseChain);
  t.equal(r.status, 1, 'a layer used by images cannot be removed');
  t.match(r.stderr, `image:${imgA!.id}`, 'the error names the first image');
  t.match(r.stderr, `image:${imgB!.id}`, 'and the second');

  // A mount holds app:a's chain (as the mount service does it), then the image goes away.
  let services = await openServices(root);
  const resolved = await services.provider.resolve('app:a');
  await services.provider.acquire(resolved.layerIds, 'mount:web');
  await services.close();
  t.same(strataJson<{ untagged: string[]; deleted: string[] }[]>(root, 'image', 'rm', 'app:a')[0], { untagged: ['app:a'], deleted: [imgA!.id] }, 'image rm untags and removes the image');
  t.same(strataJson<{ deletedLayers: string[] }>(root, 'image', 'prune').deletedLayers, [], 'prune keeps layers a mount holds');
  r = strata(root, 'layer', 'rm', imgA!.chainIDs[1]!);
  t.match(r.stderr, /STRATA_IN_USE: .*mount:web/, 'layer rm names the mount');
  const [topLayer] = strataJson<LayerJson[]>(root, 'layer', 'inspect', imgA!.chainIDs[1]!);
  t.same(topLayer!.holders, ['mount:web'], 'inspect lists the holder');

  services = await openServices(root);
  await services.provider.release(resolved.layerIds, 'mount:web');
  await services.close();
  t.same(strataJson<{ deletedLayers: string[] }>(root, 'layer', 'prune').deletedLayers, [imgA!.chainIDs[1]], 'after release, prune removes only what app:b does not use');
  t.equal(strata(root, 'image', 'rm', 'app:b').status, 0, 'rm app:b');
  t.same(strataJson<{ deletedLayers: string[] }>(root, 'image', 'prune').deletedLayers, [baseChain], 'then the base goes too');
  t.same(listDir(path.join(root, 'layers')), [], 'no content left');
  r = strata(root, 'image', 'rm', 'app:b');
  t.match(r.stderr, /^strata: STRATA_NOT_FOUND: no image app:b/, 'removing it again: STRATA_NOT_FOUND');
});

t.test('a 128-layer chain mounts (short relative lowerdir names)', async (t) => {
  const s = new Scratch(t, 'images-deep');
  const root = s.path('root');
  const tars: Buffer[] = [];
  for (let i = 0; i < 128; i++) {
    const entries = [{ name: 'n/', type: 'directory' as const }, { name: `n/${i}`, data: String(i) }, { name: 'top', data: String(i) }];
    if (i % 2 === 1) entries.push({ name: `n/.wh.${i - 1}`, data: '' });
    tars.push(await craftTar(entries));
  }
  writeOciLayout(s.path('deep'), tars, 'deep');
  const imported = strata(root, 'image', 'import', s.path('deep'), '--name', 'deep:128');
  t.equal(imported.status, 0, `import 128 layers: ${imported.stderr}`);

  const services = await openServices(root);
  const top = (await services.images.resolve('deep:128')).chainIDs.at(-1);
  const spec = await services.layers.lowerDirSpec(top!);
  const absolute = await services.layers.lowerDirs(top!);
  await services.close();
  t.equal(spec.names.length, 128, '128 lower layers');
  t.ok(absolute.join(':').length > 4096, `absolute paths (${absolute.join(':').length} chars) would not fit a mount option page`);
  t.ok(spec.lowerdir.length < 4096, `relative names fit (${spec.lowerdir.length} chars)`);

  const expected = Array.from({ length: 64 }, (_, k) => String(2 * k + 1)).sort();
  for (const kind of ['kernel', ...fuseOverlayKinds()] as const) {
    const mnt = s.path(`mnt-${kind}`);
    const upper = kind === 'kernel' ? undefined : { upper: s.mkdir(`upper-${kind}`), work: s.mkdir(`work-${kind}`) };
    s.mountOverlay(kind, spec.cwd, spec.lowerdir, mnt, upper);
    t.equal(fs.readFileSync(path.join(mnt, 'top'), 'utf8'), '127', `${kind}: the top layer wins`);
    t.same(listDir(path.join(mnt, 'n')), expected, `${kind}: whiteouts from all 128 layers apply`);
    s.unmount(mnt);
  }
});

t.test('hostile image layouts fail with a clear error, and nothing lands', async (t) => {
  const s = new Scratch(t, 'images-hostile');
  const root = s.path('root');
  const l1 = await craftTar([{ name: 'one', data: '1'.repeat(1000) }]);
  const l2 = await craftTar([{ name: 'two', data: '2'.repeat(1000) }]);
  const fresh = (label: string) => {
    const dir = s.path(label);
    writeOciLayout(dir, [l1, l2], 'x');
    return dir;
  };
  const blob = (dir: string, digest: string) => path.join(dir, 'blobs/sha256', digest.slice(7));

  const cases: Array<{ label: string; make: (dir: string) => void; code: string; mentions: RegExp }> = [
    {
      label: 'layer digest mismatch', code: 'STRATA_DIGEST_MISMATCH', mentions: /layer sha256:[0-9a-f]{64}: blob digest is/,
      make: (dir) => {
        const file = blob(dir, readManifest(dir).layers[1]!.digest);
        const bytes = fs.readFileSync(file);
        bytes[600] = 0x33; // same size, other content, still a valid tar
        fs.writeFileSync(file, bytes);
      },
    },
    {
      label: 'diffID mismatch', code: 'STRATA_DIGEST_MISMATCH', mentions: /diffID .* the image config says/,
      make: (dir) => rewriteManifest(dir, (m) => {
        const other = Buffer.concat([l2, Buffer.alloc(512)]);
        const hex = sha256Hex(other);
        fs.writeFileSync(path.join(dir, 'blobs/sha256', hex), other);
        m.layers[1] = { ...m.layers[1]!, digest: `sha256:${hex}`, size: other.length };
      }),
    },
    {
      label: 'missing blob', code: 'STRATA_BAD_ARCHIVE', mentions: /names blob sha256:[0-9a-f]{64}, which is missing/,
      make: (dir) => fs.rmSync(blob(dir, readManifest(dir).layers[1]!.digest)),
    },
    {
      label: 'unsupported media type', code: 'STRATA_UNSUPPORTED', mentions: /unsupported media type "application\/vnd\.oci\.image\.layer\.v1\.tar\+encrypted"/,
      make: (dir) => rewriteManifest(dir, (m) => { m.layers[1]!.mediaType = 'application/vnd.oci.image.layer.v1.tar+encrypted'; }),
    },
    {
      label: 'absurd size', code: 'STRATA_DIGEST_MISMATCH', mentions: /has \d+ bytes, .* says 4503599627370496/,
      make: (dir) => rewriteManifest(dir, (m) => { m.layers[1]!.size = 2 ** 52; }),
    },
    {
      label: 'tampered manifest', code: 'STRATA_DIGEST_MISMATCH', mentions: /manifest blob sha256:[0-9a-f]{64} has digest/,
      make: (dir) => {
        const index = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
        const file = blob(dir, index.manifests[0].digest);
        fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('"schemaVersion":2', '"schemaVersion":3'));
      },
    },
    {
      label: 'hostile layer entry', code: 'STRATA_BAD_ARCHIVE', mentions: /entry "\.\.\/\.\.\/evil"/,
      make: (dir) => {
        fs.rmSync(dir, { recursive: true });
        writeOciLayout(dir, [l1, Buffer.from([])], 'x');
      },
    },
  ];
  const evil = await craftTar([{ name: '../../evil', data: 'x' }]);
  cases[cases.length - 1]!.make = (dir) => { fs.rmSync(dir, { recursive: true }); writeOciLayout(dir, [l1, evil], 'x'); };

  for (const c of cases) {
    const dir = fresh(c.label.replace(/ /g, '-'));
    c.make(dir);
    const r = strata(root, 'image', 'import', dir, '--name', 'x:1');
    t.equal(r.status, 1, `${c.label}: exit 1`);
    t.match(r.stderr, new RegExp(`^strata: ${c.code}: `), `${c.label}: ${c.code}`);
    t.match(r.stderr, c.mentions, `${c.label}: says what is wrong (${r.stderr.trim()})`);
    t.same(listDir(path.join(root, 'layers')), [], `${c.label}: no layer landed (not even the good first one)`);
  }
  t.same(strataJson<unknown[]>(root, 'image', 'ls'), [], 'no image record');
  t.same(strataJson<unknown[]>(root, 'layer', 'ls'), [], 'no layer record');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'no staging left');
  const notImage = strata(root, 'image', 'import', s.mkdir('empty-dir'));
  t.match(notImage.stderr, /^strata: STRATA_UNSUPPORTED: .* is neither an OCI image layout/, 'a plain dir is not an image');
});

t.test('kill -9 during an image import leaves no layer of it', async (t) => {
  const s = new Scratch(t, 'images-kill');
  const root = s.path('root');
  const small = await craftTar([{ name: 'first', data: 'first layer' }]);
  const src = s.mkdir('big');
  for (let d = 0; d < 40; d++) {
    fs.mkdirSync(path.join(src, `d${d}`));
    for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(src, `d${d}`, `f${f}`), `${d}/${f}\n`.repeat(100));
  }
  const big = fs.readFileSync(runOk('sh', ['-c', 'tar --format=posix -C "$1" -cf "$2" . && echo "$2"', 'sh', src, s.path('big.tar')]).trim());
  writeOciLayout(s.path('oci'), [small, big], 'k');

  const child = spawn(process.execPath, [strataJs, '--root', root, 'image', 'import', s.path('oci'), '--name', 'k:1'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  let caught = false;
  // The first layer is staged (complete) while the second is being extracted: kill then.
  for (;;) {
    const staged = listDir(path.join(root, 'layer-tmp')).filter((n) => n.startsWith('stage-'));
    if (staged.length >= 2 && staged.some((n) => listDir(path.join(root, 'layer-tmp', n)).length >= 3)) {
      child.kill('SIGKILL');
      caught = true;
      break;
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  await exited;
  t.ok(caught, 'killed while the second layer was being extracted');
  t.same(strataJson<unknown[]>(root, 'image', 'ls'), [], 'no image after restart');
  t.same(strataJson<unknown[]>(root, 'layer', 'ls'), [], 'not even the complete first layer was committed');
  t.same(listDir(path.join(root, 'layers')), [], 'no content');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'staging cleaned');
  const again = strata(root, 'image', 'import', s.path('oci'), '--name', 'k:1');
  t.equal(again.status, 0, `the import then succeeds: ${again.stderr}`);
  t.equal(strataJson<unknown[]>(root, 'layer', 'ls').length, 2, 'both layers');
});

t.test('hostile image archives: symlink escapes and truncation', async (t) => {
  const s = new Scratch(t, 'images-archive');
  const root = s.path('root');
  const outside = s.mkdir('outside');
  const archives: Array<{ label: string; bytes: Buffer; mentions: RegExp }> = [
    {
      label: 'write through a symlink',
      bytes: await craftTar([{ name: 'blobs', type: 'symlink', linkname: outside }, { name: 'blobs/planted', data: 'x' }]),
      mentions: /entry "blobs\/planted" goes through "blobs", which is not a directory/,
    },
    {
      label: 'config read through a symlink',
      bytes: await craftTar([
        { name: 'cfg.json', type: 'symlink', linkname: '/etc/passwd' },
        { name: 'manifest.json', data: JSON.stringify([{ Config: 'cfg.json', RepoTags: ['evil:1'], Layers: [] }]) },
      ]),
      mentions: /names cfg\.json, which leads outside the archive/,
    },
    {
      label: 'truncated archive',
      bytes: (await craftTar([{ name: 'manifest.json', data: 'x'.repeat(5000) }])).subarray(0, 3000),
      mentions: /truncated or corrupt archive after entry "manifest\.json": Unexpected end of data/,
    },
  ];
  for (const a of archives) {
    const file = s.path(`${a.label.replace(/ /g, '-')}.tar`);
    fs.writeFileSync(file, a.bytes);
    const r = strata(root, 'image', 'import', file);
    t.equal(r.status, 1, `${a.label}: exit 1`);
    t.match(r.stderr, /^strata: STRATA_BAD_ARCHIVE: /, `${a.label}: STRATA_BAD_ARCHIVE`);
    t.match(r.stderr, a.mentions, `${a.label}: names the entry (${r.stderr.trim()})`);
  }
  t.same(listDir(outside), [], 'nothing written outside');
  t.same(strataJson<unknown[]>(root, 'image', 'ls'), [], 'no image');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'unpacked archives removed');
});
