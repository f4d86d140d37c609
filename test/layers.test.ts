/**
 * The layer store through the real `strata layer` CLI and real LevelDB: a layer tar made by system tar with every
 * kind of entry lands in kernel overlayfs format; gzip/zstd/plain and a directory dedupe to one content dir;
 * hostile tars fail naming the entry and leave nothing behind; refcounts and prune follow the rules.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { Digest } from '../lib/layers/digest.js';
import { LayerStore } from '../lib/layers/layer-store.js';
import { createLogger } from '../lib/log.js';
import { Metastore } from '../lib/store/metastore.js';
import { Scratch, craftTar, listDir, run, runOk, strata, strataJs, strataJson, tarDir } from './fixtures/store-fixtures.js';

/** ISA-L's igzip, the fast gzip decoder, when installed (Debian package isal); node:zlib is used otherwise. */
const IGZIP = ['/usr/bin/igzip', '/usr/local/bin/igzip'].find((f) => fs.existsSync(f)) ?? null;

interface LayerJson { chainID: string; diffID: string; parent: string | null; path: string; holders: string[]; children: string[]; size: number; mediaType: string }

/** A source tree with every kind of entry an image layer can carry, including OCI whiteouts. */
function makeFeatureTree(src: string): void {
  fs.mkdirSync(path.join(src, 'dir/sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'dir/file'), 'hello\n');
  fs.linkSync(path.join(src, 'dir/file'), path.join(src, 'dir/hard'));
  fs.symlinkSync('../dir/file', path.join(src, 'dir/sym'));
  fs.symlinkSync('/etc/passwd', path.join(src, 'abs-sym'));
  runOk('mkfifo', [path.join(src, 'fifo')]);
  runOk('mknod', [path.join(src, 'null'), 'c', '1', '3']);
  runOk('mknod', [path.join(src, 'loop'), 'b', '7', '200']);
  fs.copyFileSync('/bin/busybox', path.join(src, 'suid'));
  fs.chmodSync(path.join(src, 'suid'), 0o4755);
  fs.chmodSync(path.join(src, 'dir/sub'), 0o3777);
  fs.chownSync(path.join(src, 'dir/sub'), 1000, 1001);
  fs.chownSync(path.join(src, 'dir/file'), 1234, 5678);
  runOk('touch', ['-h', '-d', '2021-03-04 05:06:07.123456789', path.join(src, 'dir/file')]);
  runOk('setfattr', ['-n', 'user.note', '-v', 'kept', path.join(src, 'dir/file')]);
  runOk('setcap', ['cap_net_raw+ep', path.join(src, 'suid')]);
  fs.writeFileSync(path.join(src, 'dir/.wh.removed'), '');
  fs.mkdirSync(path.join(src, 'opaque'));
  fs.writeFileSync(path.join(src, 'opaque/.wh..wh..opq'), '');
  fs.writeFileSync(path.join(src, 'opaque/inside'), 'x');
}

t.test('a layer tar keeps every entry kind, in overlayfs on-disk format', async (t) => {
  const s = new Scratch(t, 'layer-features');
  const src = s.mkdir('src');
  makeFeatureTree(src);
  const tar = tarDir(src, s.path('layer.tar'));
  const root = s.path('root');

  const imported = strata(root, 'layer', 'import', tar);
  t.equal(imported.status, 0, `layer import succeeds: ${imported.stderr}`);
  const diffID = `sha256:${runOk('sha256sum', [tar]).split(' ')[0]}`;
  t.equal(imported.stdout.trim(), diffID, 'a bottom layer\'s chainID is the sha256 of its tar');

  const [layer] = strataJson<LayerJson[]>(root, 'layer', 'inspect', diffID);
  const dir = layer!.path;
  t.equal(path.dirname(dir), path.join(root, 'layers'), 'content lives in <root>/layers/<short id>');
  t.ok(path.basename(dir).length <= 16, 'the content dir name is short (for long lowerdir= lists)');

  const stat = (p: string) => fs.lstatSync(path.join(dir, p));
  const wh = stat('dir/removed');
  t.ok(wh.isCharacterDevice() && wh.rdev === 0, '.wh.removed became a char device 0/0 named removed');
  t.notOk(fs.existsSync(path.join(dir, 'dir/.wh.removed')), 'no .wh. file is left');
  t.equal(runOk('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', path.join(dir, 'opaque')]), 'y', '.wh..wh..opq made the dir opaque');
  t.notOk(fs.existsSync(path.join(dir, 'opaque/.wh..wh..opq')), 'no opaque marker file is left');
  t.equal(fs.readFileSync(path.join(dir, 'opaque/inside'), 'utf8'), 'x', 'opaque dir keeps its own entries');
  t.equal(stat('dir/file').ino, stat('dir/hard').ino, 'hard link shares the inode');
  t.equal(fs.readlinkSync(path.join(dir, 'dir/sym')), '../dir/file', 'relative symlink kept');
  t.equal(fs.readlinkSync(path.join(dir, 'abs-sym')), '/etc/passwd', 'absolute symlink kept verbatim (it is resolved inside the container)');
  t.ok(stat('fifo').isFIFO(), 'fifo kept');
  t.ok(stat('null').isCharacterDevice() && stat('null').rdev === fs.lstatSync('/dev/null').rdev, 'char device 1:3 kept');
  t.equal(runOk('stat', ['-c', '%t:%T', path.join(dir, 'loop')]).trim(), '7:c8', 'block device 7:200 kept');
  t.equal(stat('suid').mode & 0o7777, 0o4755, 'setuid bit kept');
  t.equal(stat('dir/sub').mode & 0o7777, 0o3777, 'setgid and sticky bits kept');
  t.same([stat('dir/sub').uid, stat('dir/sub').gid], [1000, 1001], 'directory owner kept');
  t.same([stat('dir/file').uid, stat('dir/file').gid], [1234, 5678], 'file owner kept');
  t.equal(runOk('stat', ['-c', '%y', path.join(dir, 'dir/file')]).trim(), '2021-03-04 05:06:07.123456789 +0000', 'nanosecond mtime kept');
  t.equal(runOk('getfattr', ['--only-values', '-n', 'user.note', path.join(dir, 'dir/file')]), 'kept', 'user xattr kept');
  t.match(runOk('getcap', [path.join(dir, 'suid')]), /cap_net_raw=ep/, 'security.capability kept (binary xattr)');
  t.equal(fs.readFileSync(path.join(dir, 'suid')).equals(fs.readFileSync('/bin/busybox')), true, 'file data intact');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'nothing left in staging');
});

t.test('plain, gzip and zstd tars of one layer, and the same tree as a dir, are stored once', async (t) => {
  const s = new Scratch(t, 'layer-dedupe');
  const src = s.mkdir('src');
  fs.mkdirSync(path.join(src, 'etc'));
  fs.writeFileSync(path.join(src, 'etc/hostname'), 'strata\n');
  const tar = tarDir(src, s.path('layer.tar'));
  runOk('sh', ['-c', `gzip -c "$1" > "$1.gz" && zstd -q -c "$1" > "$1.zst"`, 'sh', tar]);
  const root = s.path('root');

  const ids = [tar, `${tar}.gz`, `${tar}.zst`].map((f) => {
    const r = strata(root, 'layer', 'import', f);
    t.equal(r.status, 0, `import ${path.basename(f)}: ${r.stderr}`);
    return r.stdout.trim();
  });
  t.equal(new Set(ids).size, 1, 'all three give the same chainID (diffID of the uncompressed tar)');
  // gzip has two decoders: igzip (ISA-L, when installed) and node:zlib; both must give the same layer.
  for (const decoder of IGZIP === null ? ['zlib'] : ['zlib', 'igzip']) {
    const r = run(process.execPath, [strataJs, '--root', root, 'layer', 'import', `${tar}.gz`], { env: { ...process.env, STRATA_GUNZIP: decoder } });
    t.equal(r.status, 0, `import the gzip tar with ${decoder}: ${r.stderr}`);
    t.equal(r.stdout.trim(), ids[0], `${decoder} gives the same chainID`);
  }
  t.equal(listDir(path.join(root, 'layers')).length, 1, 'one content dir on disk');
  const layers = strataJson<LayerJson[]>(root, 'layer', 'ls');
  t.equal(layers.length, 1, 'one layer record');

  // A directory is a layer in overlayfs format; importing an extracted layer again gives a layer with the same tree.
  const dirImport = strata(root, 'layer', 'import', layers[0]!.path);
  t.equal(dirImport.status, 0, `import a directory: ${dirImport.stderr}`);
  const [fromDir] = strataJson<LayerJson[]>(root, 'layer', 'inspect', dirImport.stdout.trim());
  t.equal(fs.readFileSync(path.join(fromDir!.path, 'etc/hostname'), 'utf8'), 'strata\n', 'directory import has the files');
  const again = strata(root, 'layer', 'import', layers[0]!.path);
  t.equal(again.stdout.trim(), dirImport.stdout.trim(), 'importing the same directory twice gives the same diffID');
  t.equal(listDir(path.join(root, 'layers')).length, 2, 'and stores it once');
});

t.test('hostile tars fail naming the entry, and nothing lands', async (t) => {
  const s = new Scratch(t, 'layer-hostile');
  const root = s.path('root');
  const outside = s.path('outside');
  fs.mkdirSync(outside);
  const good = await craftTar([{ name: 'etc/', type: 'directory' }, { name: 'etc/a', data: 'aaaa'.repeat(2000) }, { name: 'etc/b', data: 'bbbb'.repeat(2000) }]);

  const cases: Array<{ label: string; bytes: Buffer; code: string; mentions: RegExp; env?: Record<string, string> }> = [
    { label: 'dotdot', bytes: await craftTar([{ name: 'ok', data: 'x' }, { name: '../escape', data: 'x' }]), code: 'STRATA_BAD_ARCHIVE', mentions: /"\.\.\/escape".*\.\./ },
    { label: 'nested dotdot', bytes: await craftTar([{ name: 'a/../../escape', data: 'x' }]), code: 'STRATA_BAD_ARCHIVE', mentions: /a\/\.\.\/\.\.\/escape/ },
    { label: 'absolute', bytes: await craftTar([{ name: `${outside}/abs`, data: 'x' }]), code: 'STRATA_BAD_ARCHIVE', mentions: /absolute path/ },
    {
      label: 'symlink escape',
      bytes: await craftTar([{ name: 'link', type: 'symlink', linkname: outside }, { name: 'link/planted', data: 'x' }]),
      code: 'STRATA_BAD_ARCHIVE', mentions: /"link\/planted".*symlink/,
    },
    {
      label: 'hardlink through symlink',
      bytes: await craftTar([{ name: 'etc', type: 'symlink', linkname: '/etc' }, { name: 'h', type: 'link', linkname: 'etc/passwd' }]),
      code: 'STRATA_BAD_ARCHIVE', mentions: /"h" is a hard link to "etc\/passwd", which is not a file earlier in this layer/,
    },
    {
      label: 'whiteout through symlink',
      bytes: await craftTar([{ name: 'link', type: 'symlink', linkname: outside }, { name: 'link/.wh.victim', data: '' }]),
      code: 'STRATA_BAD_ARCHIVE', mentions: /"link\/\.wh\.victim" goes through "link", a symlink/,
    },
    {
      label: 'opaque marker through symlink',
      bytes: await craftTar([{ name: 'link', type: 'symlink', linkname: outside }, { name: 'link/.wh..wh..opq', data: '' }]),
      code: 'STRATA_BAD_ARCHIVE', mentions: /"link\/\.wh\.\.wh\.\.opq" goes through "link", a symlink/,
    },
    { label: 'hardlink outside', bytes: await craftTar([{ name: 'h', type: 'link', linkname: '../../etc/passwd' }]), code: 'STRATA_BAD_ARCHIVE', mentions: /"h"/ },
    { label: 'hardlink absolute', bytes: await craftTar([{ name: 'h', type: 'link', linkname: '/etc/passwd' }]), code: 'STRATA_BAD_ARCHIVE', mentions: /"h".*absolute/ },
    { label: 'hardlink to missing', bytes: await craftTar([{ name: 'h', type: 'link', linkname: 'nothere' }]), code: 'STRATA_BAD_ARCHIVE', mentions: /"h".*not a file earlier/ },
    { label: 'truncated tar', bytes: good.subarray(0, 5000), code: 'STRATA_BAD_ARCHIVE', mentions: /truncated or corrupt tar/ },
    { label: 'garbage', bytes: Buffer.alloc(4096, 0x41), code: 'STRATA_BAD_ARCHIVE', mentions: /corrupt tar at the start/ },
    { label: 'absurd size', bytes: await craftTar([{ name: 'huge', data: 'x', pax: { size: String(2 ** 52) } }]), code: 'STRATA_BAD_ARCHIVE', mentions: /"huge" claims 4503599627370496 bytes/ },
  ];
  const gz = runOk('sh', ['-c', 'cat > "$1" && gzip -c "$1" | base64 -w0', 'sh', s.path('good.tar')], { input: good });
  const gzBytes = Buffer.from(gz, 'base64');
  const corrupt = Buffer.from(gzBytes);
  for (let i = 40; i < 80; i++) corrupt[i] = corrupt[i]! ^ 0x5a;
  cases.push({ label: 'truncated gzip', bytes: gzBytes.subarray(0, Math.floor(gzBytes.length / 2)), code: 'STRATA_BAD_ARCHIVE', mentions: /truncated or corrupt|unexpected end/ });
  cases.push({ label: 'corrupt gzip', bytes: corrupt, code: 'STRATA_BAD_ARCHIVE', mentions: /truncated or corrupt/ });
  const zst = Buffer.from(runOk('sh', ['-c', 'zstd -q -c "$1" | base64 -w0', 'sh', s.path('good.tar')]), 'base64');
  cases.push({ label: 'truncated zstd', bytes: zst.subarray(0, Math.floor(zst.length / 2)), code: 'STRATA_BAD_ARCHIVE', mentions: /zstd|truncated/ });
  cases.push({ label: 'name too long', bytes: await craftTar([{ name: `${'n'.repeat(300)}`, data: 'x' }]), code: 'ENAMETOOLONG', mentions: /entry "n{300}"/ });
  cases.push({ label: 'bzip2', bytes: Buffer.from('BZh91AY&SY'), code: 'STRATA_UNSUPPORTED', mentions: /bzip2/ });
  // Sparse files: their tar data is a map, not the file; both GNU encodings are refused rather than mis-extracted.
  const sparseSrc = s.mkdir('sparse-src');
  runOk('sh', ['-c', 'truncate -s 1M "$1/holey" && echo end >> "$1/holey"', 'sh', sparseSrc]);
  for (const format of ['posix', 'gnu']) {
    const file = s.path(`sparse-${format}.tar`);
    runOk('tar', [`--format=${format}`, '--sparse', '-C', sparseSrc, '-cf', file, '.']);
    cases.push({ label: `sparse ${format}`, bytes: fs.readFileSync(file), code: 'STRATA_UNSUPPORTED', mentions: /holey.*(sparse|unsupported tar entry type)/ });
  }

  // The gzip cases again through the other decoder (node:zlib here; igzip is the default when installed).
  if (IGZIP !== null) {
    for (const c of cases.filter((x) => x.label.endsWith(' gzip'))) cases.push({ ...c, label: `${c.label} (zlib)`, env: { STRATA_GUNZIP: 'zlib' } });
  }

  for (const c of cases) {
    const file = s.path(`${c.label.replace(/[ ()]/g, '-')}.tar`);
    fs.writeFileSync(file, c.bytes);
    const r = run(process.execPath, [strataJs, '--root', root, 'layer', 'import', file], { env: { ...process.env, ...(c.env ?? {}) } });
    t.equal(r.status, 1, `${c.label}: exit 1`);
    t.match(r.stderr, new RegExp(`^strata: ${c.code}: `), `${c.label}: stable code ${c.code}`);
    t.match(r.stderr, c.mentions, `${c.label}: the error names the entry/problem (${r.stderr.trim()})`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${c.label}: one-line error`);
  }
  t.same(listDir(outside), [], 'nothing was written outside the store');
  t.same(listDir(path.join(root, 'layers')), [], 'no layer content landed');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'no staging dir left');
  t.same(strataJson<unknown[]>(root, 'layer', 'ls'), [], 'no layer record landed');
});

t.test('references: holders and child layers block removal and are named; prune removes the unused', async (t) => {
  const s = new Scratch(t, 'layer-refs');
  const root = s.path('root');
  const mk = (name: string) => {
    const src = s.mkdir(`src-${name}`);
    fs.writeFileSync(path.join(src, name), name);
    return tarDir(src, s.path(`${name}.tar`));
  };
  const base = strata(root, 'layer', 'import', mk('base')).stdout.trim();
  const child = strata(root, 'layer', 'import', '--parent', base.slice(7, 19), mk('child')).stdout.trim();
  t.not(child, '', 'child layer imported with --parent (short id)');
  const [childInfo] = strataJson<LayerJson[]>(root, 'layer', 'inspect', child);
  t.equal(childInfo!.parent, base, 'child records its parent');

  let r = strata(root, 'layer', 'rm', base);
  t.equal(r.status, 1, 'a parent layer cannot be removed');
  t.match(r.stderr, new RegExp(`STRATA_IN_USE: .*layer:${child}`), 'the error names the child layer');

  // The mount service's view: acquire a chain for a holder, persisted in LevelDB across processes.
  const logger = createLogger({ level: 'silent' });
  const withStore = async <T>(work: (ls: LayerStore) => Promise<T>): Promise<T> => {
    const ms = await Metastore.open(path.join(root, 'db'), logger);
    try {
      const ls = new LayerStore(ms, root, logger);
      await ls.open();
      return await work(ls);
    } finally {
      await ms.close();
    }
  };
  const spec = await withStore(async (ls) => {
    await ls.acquireLayers((await ls.chain(child as Digest)).map((layer) => layer.chainID), 'mount:web');
    return ls.lowerDirSpec(child as Digest);
  });
  t.equal(spec.names.length, 2, 'lowerDirSpec lists the chain');
  t.equal(spec.lowerdir, spec.names.join(':'), 'top first, colon separated');

  r = strata(root, 'layer', 'rm', child);
  t.equal(r.status, 1, 'a held layer cannot be removed');
  t.match(r.stderr, /STRATA_IN_USE: layer sha256:[0-9a-f]{64} is in use by mount:web/, 'the error names the holder');
  r = strata(root, 'layer', 'rm', base);
  t.match(r.stderr, /mount:web/, 'the holder of a chain holds its lower layers too');
  t.same(strataJson<{ deletedLayers: string[] }>(root, 'layer', 'prune').deletedLayers, [], 'prune keeps held layers');

  await withStore(async (ls) => ls.releaseLayers((await ls.chain(child as Digest)).map((layer) => layer.chainID), 'mount:web'));
  t.same(strataJson<{ deletedLayers: string[] }>(root, 'layer', 'prune').deletedLayers, [child, base], 'prune removes the chain, children first');
  t.same(listDir(path.join(root, 'layers')), [], 'content dirs deleted');
  r = strata(root, 'layer', 'rm', 'deadbeef');
  t.match(r.stderr, /^strata: STRATA_NOT_FOUND: no layer deadbeef/, 'an unknown layer is STRATA_NOT_FOUND');
  r = strata(root, 'layer', 'rm', 'not-an-id!');
  t.equal(r.status, 2, 'a malformed id is a usage error');
});

t.test('kill -9 during an import leaves the whole layer or nothing', async (t) => {
  const s = new Scratch(t, 'layer-kill');
  const root = s.path('root');
  const src = s.mkdir('src');
  // Many files, so extraction takes long enough to be caught mid-way (the test waits for evidence, not for time).
  for (let d = 0; d < 40; d++) {
    fs.mkdirSync(path.join(src, `d${d}`));
    for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(src, `d${d}`, `f${f}`), `${d}/${f}\n`.repeat(200));
  }
  const tar = tarDir(src, s.path('big.tar'));
  const child = spawn(process.execPath, [strataJs, '--root', root, 'layer', 'import', tar], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  // Wait until extraction is visibly under way, then kill.
  let caught = false;
  for (;;) {
    const staging = listDir(path.join(root, 'layer-tmp'));
    if (staging.length > 0) {
      const inside = listDir(path.join(root, 'layer-tmp', staging[0]!));
      if (inside.length >= 3) { child.kill('SIGKILL'); caught = true; break; }
    }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  await exited;
  t.ok(caught, 'the import was killed mid-extraction');
  t.ok(listDir(path.join(root, 'layer-tmp')).length > 0, 'a partial staging dir was left by the crash');

  const listed = strata(root, 'layer', 'ls', '--json');
  t.equal(listed.status, 0, `the store reopens: ${listed.stderr}`);
  t.same(JSON.parse(listed.stdout), [], 'no layer record');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'start-up removed the staging dir');
  t.same(listDir(path.join(root, 'layers')), [], 'no partial content');

  const again = strata(root, 'layer', 'import', tar);
  t.equal(again.status, 0, 'the same import then succeeds');
  const [layer] = strataJson<LayerJson[]>(root, 'layer', 'inspect', again.stdout.trim());
  t.equal(runOk('sh', ['-c', 'find "$1" -type f | wc -l', 'sh', layer!.path]).trim(), '4000', 'whole layer present');
  t.equal(run('diff', ['-r', src, layer!.path]).status, 0, 'content identical to the source');
});

t.test('start-up finishes a committed import, drops records without content and moves content without records to lost+found', async (t) => {
  const s = new Scratch(t, 'layer-recover');
  const root = s.path('root');
  const logger = createLogger({ level: 'silent' });
  const open = async () => {
    const ms = await Metastore.open(path.join(root, 'db'), logger);
    const ls = new LayerStore(ms, root, logger);
    const recovered = await ls.open();
    return { ms, ls, recovered };
  };
  const mk = (name: string) => {
    const src = s.mkdir(`src-${name}`);
    fs.writeFileSync(path.join(src, name), name.repeat(100));
    return tarDir(src, s.path(`${name}.tar`));
  };

  let { ms, ls } = await open();
  const kept = await ls.importTarFile(mk('kept'));
  const lost = await ls.importTarFile(mk('lost'));
  // Crash after the commit batch, before the rename: the record names the staged dir, start-up renames it.
  const staged = await ls.stageTarFile(mk('committed'), { what: 'committed.tar' });
  const dirName = staged.diffID.slice(7, 19);
  await ms.batch([
    { type: 'put', sublevel: 'layerContents', key: staged.diffID, value: { diffID: staged.diffID, dirName, size: staged.size, entries: staged.entries, compressedDigest: staged.compressedDigest, compressedSize: staged.compressedSize, mediaType: staged.mediaType, createdAt: new Date().toISOString(), stagingName: staged.stagingName } },
    { type: 'put', sublevel: 'layers', key: staged.diffID, value: { chainID: staged.diffID, diffID: staged.diffID, parent: null, depth: 1, createdAt: new Date().toISOString() } },
  ]);
  await ms.close();
  // A content dir nobody records (crash between a removal's batch and its delete), and a record whose dir is gone.
  fs.mkdirSync(path.join(root, 'layers', 'ffffffffffff'));
  fs.writeFileSync(path.join(root, 'layers', 'ffffffffffff', 'junk'), 'junk');
  fs.rmSync(lost.path, { recursive: true });

  const reopened = await open();
  ({ ms, ls } = reopened);
  t.same(reopened.recovered.rolledForward, [staged.diffID], 'the committed import was rolled forward');
  t.same(reopened.recovered.droppedRecords.sort(), [`content ${lost.diffID}`, `layer ${lost.chainID}`].sort(), 'records without content were dropped');
  t.same(reopened.recovered.deletedDirs, [], 'nothing that could hold data was deleted');
  t.equal(reopened.recovered.quarantined.length, 1, 'content without a record was moved aside');
  t.match(reopened.recovered.quarantined[0], /\/lost\+found\/\d{8}T\d{6}Z-layer-ffffffffffff$/, 'to lost+found, named by time and dir');
  t.equal(fs.readFileSync(path.join(reopened.recovered.quarantined[0]!, 'junk'), 'utf8'), 'junk', 'with its files');
  const committed = await ls.inspect(staged.diffID);
  t.equal(fs.readFileSync(path.join(committed.path, 'committed'), 'utf8'), 'committed'.repeat(100), 'the rolled-forward layer is whole');
  t.same((await ls.list()).map((l) => l.chainID).sort(), [staged.diffID, kept.chainID].sort(), 'exactly the complete layers remain');
  t.same(listDir(path.join(root, 'layer-tmp')), [], 'staging is empty');
  await ms.close();
});

t.test('progress is drawn on a terminal only', async (t) => {
  const s = new Scratch(t, 'layer-progress');
  const src = s.mkdir('src');
  fs.writeFileSync(path.join(src, 'data'), Buffer.alloc(300_000, 7));
  const tar = tarDir(src, s.path('layer.tar'));
  // script(1) gives the CLI a real pseudo-terminal.
  const onTty = run('script', ['-qec', `${process.execPath} ${strataJs} --root ${s.path('root-tty')} layer import ${tar}`, '/dev/null']);
  t.equal(onTty.status, 0, `import on a tty: ${onTty.stderr}`);
  // The bars of lib/cli/progress.ts: "layer 1/1 [====] 1.2 MiB/s 292.0 KiB/292.0 KiB".
  t.match(onTty.stdout, /layer 1\/1 \[[^\]]*\] +[\d.]+ (B|KiB|MiB|GiB)\/s +[\d.]+ KiB\/[\d.]+ KiB/, 'a tty shows layer n/m, the rate and bytes done of total');
  const piped = strata(s.path('root-pipe'), 'layer', 'import', tar);
  t.equal(piped.stderr, '', 'a pipe gets no progress');
  t.match(piped.stdout, /^sha256:[0-9a-f]{64}\n$/, 'just the chainID');
});
