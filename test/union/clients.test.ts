/**
 * Real clients on a candidate mount (STRATA_TEST_CANDIDATE, default strata), with kernel overlayfs over an
 * identical lower next to it wherever the expected output is "what the kernel does": ls, cat, cp -a both ways,
 * tar both ways (GNU tar is strict about inode numbers and times), vim with its swap file in the mount,
 * git, find, and a non-root user who must be refused exactly where the kernel refuses.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { candidateKind, requireCandidate, run, runOk, Sandbox, type OverlayDirs } from '../helpers/sandbox.js';
import { buildLayer, diffTrees, snapshotTree, type LayerSpec } from '../helpers/tree.js';

const candidate = candidateKind();
requireCandidate();

const LOWER: LayerSpec = {
  'src/README': { type: 'file', content: 'read me\n' },
  'src/lib/a.c': { type: 'file', content: 'int a;\n', mode: 0o644 },
  'src/lib/b.c': { type: 'file', content: 'int b;\n'.repeat(1000), mode: 0o600, uid: 1000, gid: 1000 },
  'src/bin/run': { type: 'file', content: '#!/bin/sh\necho run\n', mode: 0o755 },
  'src/link': { type: 'symlink', target: 'lib/a.c' },
  'src/hard': { type: 'hardlink', target: 'src/README' },
  'src/empty': { type: 'dir' },
  'src/x': { type: 'file', content: 'x', xattrs: { 'user.tag': 'lower' } },
  'edit/text.txt': { type: 'file', content: 'aaa\nbab\n' },
  'repo/main.c': { type: 'file', content: 'int main(void) { return 0; }\n' },
  'repo/doc/notes.md': { type: 'file', content: '# notes\n' },
  'perm/private': { type: 'dir', mode: 0o700 },
  'perm/private/secret': { type: 'file', content: 'secret', mode: 0o600 },
  'perm/pub': { type: 'dir', mode: 0o755 },
  'perm/pub/readable': { type: 'file', content: 'readable', mode: 0o644 },
  'perm/pub/worldw': { type: 'file', content: 'world writable', mode: 0o666 },
  'perm/pub/noread': { type: 'file', content: 'no read', mode: 0o200 },
  'perm/sticky': { type: 'dir', mode: 0o1777 },
  'perm/sticky/rootfile': { type: 'file', content: 'root', mode: 0o666 },
  'perm/nobody': { type: 'dir', mode: 0o755, uid: 65534, gid: 65534 },
  'perm/nobody/own': { type: 'file', content: 'own', mode: 0o644, uid: 65534, gid: 65534 },
  'race/big': { type: 'file', content: Buffer.alloc(8 * 1024 * 1024, 0x61) },
  ...Object.fromEntries(Array.from({ length: 1500 }, (_, i) => [`wide/d${i % 30}/f${i}`, { type: 'file' as const, content: `${i}` }])),
};

/** A source tree outside the mount, for copying in: nested dirs, links, modes, nanosecond times, xattrs. */
const OUTSIDE: LayerSpec = {
  'tree/one': { type: 'file', content: '1' },
  'tree/sub/two': { type: 'file', content: '2'.repeat(70000), mode: 0o640 },
  'tree/sub/deeper/three': { type: 'file', content: '3', xattrs: { 'user.k': 'v' } },
  'tree/sym': { type: 'symlink', target: 'sub/two' },
  'tree/hl': { type: 'hardlink', target: 'tree/one' },
  'tree/fifo': { type: 'fifo' },
  'tree/ro': { type: 'dir', mode: 0o555 },
};

t.test(`real clients on ${candidate}`, async (t) => {
  const box = await Sandbox.create(t, 'clients');
  // The non-root user must be able to reach the mountpoints.
  fs.chmodSync(box.root, 0o755);
  const mk = (name: string): OverlayDirs => {
    const lower = path.join(box.root, name, 'lower');
    buildLayer(lower, LOWER);
    return { lowers: [lower], upper: box.dir(`${name}/upper`), work: box.dir(`${name}/work`), mnt: box.dir(`${name}/mnt`) };
  };
  const k = mk('k');
  const c = mk('c');
  box.mount('kernel', k);
  box.mount(candidate, c);
  const outside = path.join(box.root, 'outside');
  buildLayer(outside, OUTSIDE);

  await t.test('ls -la and find list what the kernel lists', async (tt) => {
    // Files only for ls: dir sizes and the mount root's own entry legitimately differ.
    const ls = (m: string) => runOk('ls', ['-la', '--time-style=full-iso', '--color=never', 'src', 'src/lib', 'perm/pub'], { cwd: m })
      .split('\n').filter((l) => !/^(d|total)/.test(l));
    tt.same(ls(c.mnt), ls(k.mnt), 'ls -la of non-dir entries matches');
    const find = (m: string) => runOk('find', ['.', '-printf', '%y %m %U:%G %n %P\\n'], { cwd: m }).split('\n').sort();
    tt.same(find(c.mnt), find(k.mnt), 'find -printf "%y %m %U:%G %n %P" matches');
    const findFiles = (m: string) => runOk('find', ['.', '!', '-type', 'd', '-printf', '%s %T@ %l %P\\n'], { cwd: m }).split('\n').sort();
    tt.same(findFiles(c.mnt), findFiles(k.mnt), 'find sizes, nanosecond mtimes and link targets match');
  });

  await t.test('cat', async (tt) => {
    tt.equal(runOk('cat', ['src/README', 'src/hard', 'src/link'], { cwd: c.mnt }), 'read me\nread me\nint a;\n');
    tt.equal(runOk('cat', ['src/lib/b.c'], { cwd: c.mnt }), 'int b;\n'.repeat(1000));
  });

  await t.test('tar -c of the mount is clean and matches the kernel', async (tt) => {
    const tarOf = (m: string) => {
      const r = run('tar', ['-C', m, '--sort=name', '--numeric-owner', '--xattrs', '--xattrs-include=user.*', '-cf', '-', 'src', 'repo', 'edit'], {});
      tt.equal(r.stderr, '', `tar -c prints no warning on ${m}`);
      tt.equal(r.status, 0, 'tar -c exits 0');
      return r.stdout;
    };
    const ct = tarOf(c.mnt);
    const kt = tarOf(k.mnt);
    const list = (tar: string) => runOk('tar', ['-tvf', '-', '--full-time', '--numeric-owner'], { input: Buffer.from(tar, 'latin1') });
    tt.equal(list(ct), list(kt), 'the archive listings (modes, owners, sizes, times, links) are identical');
  });

  await t.test('cp -a into the mount keeps everything', async (tt) => {
    const r = run('cp', ['-a', path.join(outside, 'tree'), path.join(c.mnt, 'copied')]);
    tt.equal(r.status, 0, `cp -a exits 0 ${r.stderr}`);
    tt.same(diffTrees(snapshotTree(path.join(outside, 'tree')), snapshotTree(path.join(c.mnt, 'copied'))), [], 'the copy equals the source (modes, owners, ns times, links, xattrs)');
    // diff cannot compare fifos; the snapshot above already did.
    const diff = run('diff', ['-r', '--no-dereference', '-x', 'fifo', path.join(outside, 'tree'), path.join(c.mnt, 'copied')]);
    tt.equal(diff.status, 0, `diff -r agrees ${diff.stdout}${diff.stderr}`);
  });

  await t.test('cp -a out of the mount keeps everything', async (tt) => {
    const out = path.join(box.root, 'copied-out');
    const r = run('cp', ['-a', path.join(c.mnt, 'src'), out]);
    tt.equal(r.status, 0, `cp -a exits 0 ${r.stderr}`);
    tt.same(diffTrees(snapshotTree(path.join(c.lowers[0]!, 'src')), snapshotTree(out)), [], 'the copy equals the lower tree');
  });

  await t.test('tar -x into the mount, over lower dirs too', async (tt) => {
    const tarball = path.join(box.root, 'tree.tar');
    runOk('tar', ['-C', outside, '--xattrs', '--xattrs-include=user.*', '-cf', tarball, 'tree']);
    const fresh = run('tar', ['-C', c.mnt, '--xattrs', '--xattrs-include=user.*', '-xpf', tarball]);
    tt.equal(fresh.stderr, '', 'tar -x into a new dir prints nothing');
    tt.equal(fresh.status, 0, 'and exits 0');
    tt.same(diffTrees(snapshotTree(path.join(outside, 'tree')), snapshotTree(path.join(c.mnt, 'tree'))), [], 'the extracted tree equals the source');
    // Extracting over existing lower dirs copies them up mid-extraction: GNU tar checks the dirs' inode numbers.
    // The same extraction on the kernel is the expected tree (merged dirs report nlink 1 there).
    const lowerTar = path.join(box.root, 'lower-src.tar');
    runOk('tar', ['-C', c.lowers[0]!, '--format=posix', '--xattrs', '--xattrs-include=user.*', '-cf', lowerTar, 'src', 'perm']);
    for (const m of [k.mnt, c.mnt]) {
      const over = run('tar', ['-C', m, '--xattrs', '--xattrs-include=user.*', '-xpf', lowerTar]);
      tt.equal(over.stderr, '', `tar -x over lower dirs prints nothing (no "Directory renamed before its status could be extracted") on ${m}`);
      tt.equal(over.status, 0, 'and exits 0');
    }
    tt.same(diffTrees(snapshotTree(path.join(k.mnt, 'src')), snapshotTree(path.join(c.mnt, 'src'))), [], 'the re-extracted tree equals the kernel\'s');
    const filesOnly = (root: string) => Object.fromEntries(Object.entries(snapshotTree(root)).filter(([, e]) => e.type !== 'dir'));
    tt.same(diffTrees(filesOnly(path.join(c.lowers[0]!, 'src')), filesOnly(path.join(c.mnt, 'src'))), [], 'files, links and nanosecond times equal the lower');
  });

  await t.test('vim edits a lower file with its swap file in the mount', async (tt) => {
    const dir = path.join(c.mnt, 'edit');
    const report = path.join(box.root, 'vim-swap-report');
    // 'directory=.' puts the swap file next to the edited file; the report records where it was and that it existed.
    const r = run('vim', ['-Es', '-u', 'NONE', '-i', 'NONE', '-c', 'set swapfile directory=.', '-c', 'edit text.txt',
      '-c', `call writefile([fnamemodify(swapname('%'), ':p'), filereadable(swapname('%'))], '${report}')`,
      '-c', '%s/a/b/', '-c', 'wq'], { cwd: dir });
    tt.equal(r.status, 0, `vim exits 0 ${r.stderr}`);
    const [swapPath, existed] = fs.readFileSync(report, 'utf8').trim().split('\n');
    tt.equal(path.dirname(swapPath ?? ''), dir, `the swap file was in the mount (${swapPath})`);
    tt.equal(existed, '1', 'the swap file existed while editing');
    tt.equal(fs.readFileSync(path.join(dir, 'text.txt'), 'utf8'), 'baa\nbbb\n', 'the edit is saved');
    tt.same(fs.readdirSync(dir), ['text.txt'], 'the swap file is gone after :wq');
    tt.equal(fs.readFileSync(path.join(c.lowers[0]!, 'edit/text.txt'), 'utf8'), 'aaa\nbab\n', 'the lower is untouched');
  });

  await t.test('git init, add and commit inside the mount', async (tt) => {
    const repo = path.join(c.mnt, 'repo');
    const git = (...args: string[]) => run('git', ['-c', 'user.name=Strata Test', '-c', 'user.email=test@strata.invalid', '-c', 'init.defaultBranch=main', ...args], { cwd: repo });
    for (const args of [['init', '-q'], ['add', '.'], ['commit', '-q', '-m', 'first'], ['fsck', '--strict']]) {
      const r = git(...args);
      tt.equal(r.status, 0, `git ${args.join(' ')} exits 0 ${r.stderr}`);
    }
    fs.appendFileSync(path.join(repo, 'main.c'), '// more\n');
    tt.equal(git('commit', '-q', '-am', 'second').status, 0, 'a second commit after editing a lower file');
    tt.equal(git('status', '--porcelain').stdout, '', 'the work tree is clean');
    tt.equal(git('log', '--format=%s').stdout, 'second\nfirst\n', 'both commits are in the log');
  });

  await t.test('processes racing to copy up the same lower file do not corrupt it', async (tt) => {
    // Eight dd processes started together, each the first to open the 8 MiB lower file for writing (a copy-up),
    // each writing its own 4 KiB block at its own offset: every block must land, and the rest keep the lower data.
    const file = path.join(c.mnt, 'race/big');
    const writers = Array.from({ length: 8 }, (_, i) => {
      const child = spawn('dd', ['of=' + file, 'bs=4096', `seek=${i * 256 + 1}`, 'count=1', 'conv=notrunc', 'status=none'], { stdio: ['pipe', 'ignore', 'pipe'] });
      child.stdin.end(Buffer.alloc(4096, 0x30 + i));
      return child;
    });
    const codes = await Promise.all(writers.map(async (child) => (await once(child, 'exit'))[0]));
    tt.same(codes, Array(8).fill(0), 'every writer succeeded');
    const data = fs.readFileSync(file);
    tt.equal(data.length, 8 * 1024 * 1024, 'the size is unchanged');
    const expected = Buffer.alloc(8 * 1024 * 1024, 0x61);
    for (let i = 0; i < 8; i++) expected.fill(0x30 + i, (i * 256 + 1) * 4096, (i * 256 + 2) * 4096);
    tt.ok(data.equals(expected), 'every block written and nothing else changed');
    tt.equal(fs.readFileSync(path.join(c.lowers[0]!, 'race/big')).equals(Buffer.alloc(8 * 1024 * 1024, 0x61)), true, 'the lower is untouched');
  });

  await t.test('rm -rf of a large merged tree works in one pass', async (tt) => {
    // Upper entries mixed in, so every dir is merged and readdir must not go stale while rm deletes.
    for (let d = 0; d < 30; d += 3) fs.writeFileSync(path.join(c.mnt, `wide/d${d}/upper-file`), 'u');
    fs.mkdirSync(path.join(c.mnt, 'wide/upper-dir/sub'), { recursive: true });
    const r = run('rm', ['-rf', path.join(c.mnt, 'wide')]);
    tt.equal(r.status, 0, `rm -rf exits 0 ${r.stderr}`);
    tt.equal(r.stderr, '', 'rm prints nothing');
    tt.notOk(fs.existsSync(path.join(c.mnt, 'wide')), 'the tree is gone');
    tt.ok(fs.existsSync(path.join(c.lowers[0]!, 'wide/d0/f0')), 'the lower is untouched');
  });

  await t.test('a non-root user is refused exactly where the kernel refuses', async (tt) => {
    const accesses: [string, string][] = [
      ['read private file', 'cat perm/private/secret'],
      ['list private dir', 'ls perm/private'],
      ['read readable file', 'cat perm/pub/readable'],
      ['read write-only file', 'cat perm/pub/noread'],
      ['write readable file', 'echo x >> perm/pub/readable'],
      ['write world-writable file', 'echo x >> perm/pub/worldw'],
      ['create in root dir', 'touch perm/pub/new'],
      ['unlink in root dir', 'rm -f perm/pub/worldw'],
      ['chmod root file', 'chmod 777 perm/pub/readable'],
      ['chown own file', 'chown 0 perm/nobody/own'],
      ['create in sticky dir', 'touch perm/sticky/mine && echo hi > perm/sticky/mine'],
      ['remove root file in sticky dir', 'rm -f perm/sticky/rootfile'],
      ['rename root file in sticky dir', 'mv perm/sticky/rootfile perm/sticky/renamed'],
      ['write own file', 'echo mine >> perm/nobody/own'],
      ['chmod own file', 'chmod 600 perm/nobody/own'],
      ['mkdir in own dir', 'mkdir perm/nobody/d'],
      ['set user xattr on root file', 'setfattr -n user.x -v 1 perm/pub/worldw'],
      ['set trusted xattr on own file', 'setfattr -n trusted.x -v 1 perm/nobody/own'],
      ['utimes on root file', 'touch -d @1000 perm/pub/worldw'],
      ['touch now on world-writable file', 'touch perm/pub/worldw'],
    ];
    const asNobody = (m: string) => accesses.map(([name, cmd]) => {
      const r = run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', 'sh', '-c', cmd], { cwd: m });
      const reason = r.stderr.trim().split('\n').pop()?.split(': ').pop() ?? '';
      return `${name}: exit ${r.status}${r.status ? ` (${reason})` : ''}`;
    });
    const expected = asNobody(k.mnt);
    tt.ok(expected.some((line) => line.includes('Permission denied')), 'the kernel denies some accesses (the test can fail)');
    tt.same(asNobody(c.mnt), expected, 'same outcome for every access');
    tt.same(diffTrees(snapshotTree(path.join(k.mnt, 'perm')), snapshotTree(path.join(c.mnt, 'perm'))), [], 'and the same resulting tree');
  });
});
