/**
 * strata_sys against the real filesystem: every addon function in a fresh temp dir (ext4 or whatever os.tmpdir()
 * is on), plus a tiny tmpfs for ENOSPC. Nothing is mocked.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import {
  sys, StatIndex, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, UTIME_NOW, UTIME_OMIT, XATTR_CREATE, XATTR_REPLACE,
} from '../lib/native/index.js';

const { S_IFCHR, S_IFIFO, S_IFMT, O_RDONLY, O_RDWR, O_CREAT, O_TRUNC } = fs.constants;

function tempDir(tt: Tap): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-native-test-'));
  tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}
type Tap = Test;

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Asserts a Node-style errno error: code, negative errno, syscall and (when given) path. */
function assertErrno(tt: Tap, fn: () => unknown, code: string, syscall: string, file?: string): void {
  try {
    fn();
    tt.fail(`expected ${code} from ${syscall}`);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    tt.ok(e instanceof Error, 'is an Error');
    tt.equal(e.code, code, `code ${code}`);
    tt.equal(e.errno, -(os.constants.errno as Record<string, number>)[code]!, 'negative errno');
    tt.equal(e.syscall, syscall, 'syscall');
    if (file !== undefined) {
      tt.equal(e.path, file, 'path');
      tt.match(e.message, new RegExp(`^${code}: .+, ${syscall} '`), 'message like Node');
    }
  }
}

t.test('lstatRaw and fstatRaw match fs.lstatSync({ bigint: true }) to the nanosecond', (tt) => {
  const dir = tempDir(tt);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, 'hello world');
  sys.utimensat(file, 1234567890, 123456789, 1500000000, 987654321, false);
  const out = new Float64Array(StatIndex.length);
  tt.equal(sys.lstatRaw(file, out), 0);
  const st = fs.lstatSync(file, { bigint: true });
  tt.equal(out[StatIndex.mode], Number(st.mode));
  tt.equal(out[StatIndex.uid], Number(st.uid));
  tt.equal(out[StatIndex.gid], Number(st.gid));
  tt.equal(out[StatIndex.size], 11);
  tt.equal(out[StatIndex.dev], Number(st.dev));
  tt.equal(out[StatIndex.nlink], Number(st.nlink));
  tt.equal(out[StatIndex.ino], Number(st.ino));
  tt.equal(out[StatIndex.rdev], Number(st.rdev));
  tt.equal(out[StatIndex.blksize], Number(st.blksize));
  tt.equal(out[StatIndex.blocks], Number(st.blocks));
  const ns = (sec: number, nsec: number) => BigInt(sec) * 1_000_000_000n + BigInt(nsec);
  tt.equal(ns(out[StatIndex.atimeSec]!, out[StatIndex.atimeNsec]!), st.atimeNs);
  tt.equal(ns(out[StatIndex.mtimeSec]!, out[StatIndex.mtimeNsec]!), st.mtimeNs);
  tt.equal(ns(out[StatIndex.ctimeSec]!, out[StatIndex.ctimeNsec]!), st.ctimeNs);
  tt.equal(out[StatIndex.atimeNsec], 123456789);
  tt.equal(out[StatIndex.mtimeNsec], 987654321);

  // lstat does not follow the final symlink.
  fs.symlinkSync('f', path.join(dir, 'link'));
  tt.equal(sys.lstatRaw(path.join(dir, 'link'), out), 0);
  tt.equal(out[StatIndex.mode]! & S_IFMT, fs.constants.S_IFLNK);

  tt.equal(sys.lstatRaw(path.join(dir, 'missing'), out), -2, 'ENOENT is -2, not a throw');
  tt.equal(sys.lstatRaw(path.join(file, 'below-a-file'), out), -20, 'ENOTDIR is -20');

  const fd = fs.openSync(file, 'r');
  tt.teardown(() => fs.closeSync(fd));
  const out2 = new Float64Array(StatIndex.length);
  tt.equal(sys.fstatRaw(fd, out2), 0);
  tt.equal(out2[StatIndex.ino], Number(st.ino));
  tt.equal(out2[StatIndex.mtimeNsec], 987654321);
  tt.equal(sys.fstatRaw(987654, out2), -9, 'EBADF is -9');
  tt.throws(() => sys.lstatRaw(file, new Float64Array(3)), { code: 'ERR_INVALID_ARG_TYPE' }, 'short array');
  tt.throws(() => sys.lstatRaw(file, new Uint32Array(32) as unknown as Float64Array), { code: 'ERR_INVALID_ARG_TYPE' });
  tt.end();
});

t.test('xattrs by path (no follow) and by fd', (tt) => {
  const dir = tempDir(tt);
  const file = path.join(dir, 'target');
  const link = path.join(dir, 'link');
  fs.writeFileSync(file, 'x');
  fs.symlinkSync('target', link);

  // trusted.* on the symlink itself, as overlayfs stores metadata: the target must stay untouched.
  sys.lsetxattr(link, 'trusted.overlay.opaque', Buffer.from('y'), 0);
  tt.same(sys.lgetxattr(link, 'trusted.overlay.opaque'), Buffer.from('y'));
  tt.equal(sys.lgetxattr(file, 'trusted.overlay.opaque'), null, 'the target did not get it');
  tt.ok(sys.llistxattr(link).includes('trusted.overlay.opaque'));
  tt.notOk(sys.llistxattr(file).includes('trusted.overlay.opaque'));

  tt.equal(sys.lgetxattr(file, 'user.absent'), null, 'ENODATA is null');
  assertErrno(tt, () => sys.lgetxattr(path.join(dir, 'missing'), 'user.a'), 'ENOENT', 'lgetxattr', path.join(dir, 'missing'));

  sys.lsetxattr(file, 'user.a', Buffer.from('one'), XATTR_CREATE);
  assertErrno(tt, () => sys.lsetxattr(file, 'user.a', Buffer.from('two'), XATTR_CREATE), 'EEXIST', 'lsetxattr', file);
  assertErrno(tt, () => sys.lsetxattr(file, 'user.b', Buffer.from('two'), XATTR_REPLACE), 'ENODATA', 'lsetxattr', file);
  sys.lsetxattr(file, 'user.a', Buffer.from('two'), XATTR_REPLACE);
  tt.same(sys.lgetxattr(file, 'user.a'), Buffer.from('two'));

  // Empty and large values: sized by probing, never ERANGE.
  sys.lsetxattr(file, 'user.empty', Buffer.alloc(0), 0);
  tt.same(sys.lgetxattr(file, 'user.empty'), Buffer.alloc(0));
  const big = Buffer.alloc(3900, 'abcdefghij');
  sys.lsetxattr(file, 'user.big', big, 0);
  tt.same(sys.lgetxattr(file, 'user.big'), big);

  tt.same(sys.llistxattr(file).filter((n) => n.startsWith('user.')).sort(), ['user.a', 'user.big', 'user.empty']);
  sys.lremovexattr(file, 'user.a');
  tt.equal(sys.lgetxattr(file, 'user.a'), null);
  assertErrno(tt, () => sys.lremovexattr(file, 'user.a'), 'ENODATA', 'lremovexattr', file);

  const fd = fs.openSync(file, 'r+');
  tt.teardown(() => fs.closeSync(fd));
  sys.fsetxattr(fd, 'trusted.overlay.origin', Buffer.from([0, 1, 2, 255]), 0);
  tt.same(sys.fgetxattr(fd, 'trusted.overlay.origin'), Buffer.from([0, 1, 2, 255]));
  tt.same(sys.lgetxattr(file, 'trusted.overlay.origin'), Buffer.from([0, 1, 2, 255]), 'visible by path too');
  tt.equal(sys.fgetxattr(fd, 'user.absent'), null);
  tt.ok(sys.flistxattr(fd).includes('trusted.overlay.origin'));
  tt.ok(sys.flistxattr(fd).includes('user.big'));
  assertErrno(tt, () => sys.fsetxattr(fd, 'user.big', big, XATTR_CREATE), 'EEXIST', 'fsetxattr');
  tt.throws(() => sys.lsetxattr(file, 'user.x', 'not a buffer' as unknown as Buffer, 0), { code: 'ERR_INVALID_ARG_TYPE' });
  tt.end();
});

t.test('mknod makes whiteouts, fifos and devices with the full dev number', (tt) => {
  const dir = tempDir(tt);
  const whiteout = path.join(dir, 'wh');
  sys.mknod(whiteout, S_IFCHR | 0o000, 0);
  const st = fs.lstatSync(whiteout);
  tt.ok(st.isCharacterDevice());
  tt.equal(st.rdev, 0, 'a whiteout is char 0/0');

  const fifo = path.join(dir, 'fifo');
  sys.mknod(fifo, S_IFIFO | 0o640, 0);
  tt.ok(fs.lstatSync(fifo).isFIFO());
  tt.equal(fs.lstatSync(fifo).mode & 0o777, 0o640 & ~process.umask());

  // major 259, minor 300000: needs the high bits of the glibc dev_t encoding.
  const major = 259, minor = 300000;
  const dev = ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & ~0xff) * 4096);
  sys.mknod(path.join(dir, 'dev'), S_IFCHR | 0o600, dev);
  tt.equal(fs.lstatSync(path.join(dir, 'dev')).rdev, dev);
  tt.equal(spawnSync('stat', ['-c', '%Hr:%Lr', path.join(dir, 'dev')], { encoding: 'utf8' }).stdout.trim(), `${major}:${minor}`);

  assertErrno(tt, () => sys.mknod(whiteout, S_IFCHR, 0), 'EEXIST', 'mknod', whiteout);
  tt.end();
});

t.test('renameat2: NOREPLACE, EXCHANGE and WHITEOUT', (tt) => {
  const dir = tempDir(tt);
  const a = path.join(dir, 'a');
  const b = path.join(dir, 'b');
  fs.writeFileSync(a, 'A');
  fs.writeFileSync(b, 'B');

  assertErrno(tt, () => sys.renameat2(a, b, RENAME_NOREPLACE), 'EEXIST', 'rename', a);
  tt.equal(fs.readFileSync(b, 'utf8'), 'B', 'nothing replaced');

  sys.renameat2(a, b, RENAME_EXCHANGE);
  tt.equal(fs.readFileSync(a, 'utf8'), 'B');
  tt.equal(fs.readFileSync(b, 'utf8'), 'A');

  fs.mkdirSync(path.join(dir, 'd'));
  sys.renameat2(path.join(dir, 'd'), a, RENAME_EXCHANGE);
  tt.ok(fs.lstatSync(a).isDirectory(), 'exchange works across file types');

  const c = path.join(dir, 'c');
  sys.renameat2(b, c, RENAME_NOREPLACE);
  tt.equal(fs.readFileSync(c, 'utf8'), 'A');

  sys.renameat2(c, b, RENAME_WHITEOUT);
  const wh = fs.lstatSync(c);
  tt.ok(wh.isCharacterDevice() && wh.rdev === 0, 'RENAME_WHITEOUT leaves a 0/0 char device behind');
  tt.equal(fs.readFileSync(b, 'utf8'), 'A');

  try {
    sys.renameat2(path.join(dir, 'nope'), path.join(dir, 'nope2'), 0);
    tt.fail('expected ENOENT');
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { dest?: string };
    tt.equal(e.code, 'ENOENT');
    tt.equal(e.dest, path.join(dir, 'nope2'));
    tt.equal(e.message, `ENOENT: no such file or directory, rename '${path.join(dir, 'nope')}' -> '${path.join(dir, 'nope2')}'`);
  }
  tt.end();
});

t.test('utimensat and futimens: nanoseconds, UTIME_OMIT, UTIME_NOW, noFollow', (tt) => {
  const dir = tempDir(tt);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, '');
  sys.utimensat(file, 1000000000, 111111111, 1200000000, 222222222, false);
  let st = fs.statSync(file, { bigint: true });
  tt.equal(st.atimeNs, 1000000000_111111111n);
  tt.equal(st.mtimeNs, 1200000000_222222222n);

  // Only mtime: atime must be kept (what `touch -m` and tar need).
  sys.utimensat(file, 0, UTIME_OMIT, 1300000000, 333333333, false);
  st = fs.statSync(file, { bigint: true });
  tt.equal(st.atimeNs, 1000000000_111111111n, 'atime omitted');
  tt.equal(st.mtimeNs, 1300000000_333333333n);

  const before = BigInt(Math.floor(Date.now() / 1000) - 5) * 1_000_000_000n;
  sys.utimensat(file, 0, UTIME_NOW, 0, UTIME_OMIT, false);
  st = fs.statSync(file, { bigint: true });
  tt.ok(st.atimeNs > before, 'UTIME_NOW sets now');
  tt.equal(st.mtimeNs, 1300000000_333333333n);

  // Before 1970.
  sys.utimensat(file, -86400, 5, -1, 999999999, false);
  st = fs.statSync(file, { bigint: true });
  tt.equal(st.atimeNs, -86400n * 1_000_000_000n + 5n);
  tt.equal(st.mtimeNs, -1n);

  // noFollow changes the symlink, not its target.
  const link = path.join(dir, 'link');
  fs.symlinkSync('f', link);
  sys.utimensat(link, 1400000000, 444, 1400000000, 555, true);
  tt.equal(fs.lstatSync(link, { bigint: true }).mtimeNs, 1400000000_000000555n);
  tt.equal(fs.statSync(file, { bigint: true }).mtimeNs, -1n, 'target untouched');

  const fd = fs.openSync(file, 'r+');
  tt.teardown(() => fs.closeSync(fd));
  sys.futimens(fd, 1500000000, 1, 0, UTIME_OMIT);
  st = fs.statSync(file, { bigint: true });
  tt.equal(st.atimeNs, 1500000000_000000001n);
  tt.equal(st.mtimeNs, -1n);
  assertErrno(tt, () => sys.utimensat(path.join(dir, 'missing'), 0, 0, 0, 0, false), 'ENOENT', 'utimensat', path.join(dir, 'missing'));
  assertErrno(tt, () => sys.utimensat(file, 0, 1_000_000_000, 0, 0, false), 'EINVAL', 'utimensat', file);
  tt.end();
});

t.test('copyData keeps holes and content of a 64 MiB sparse file', async (tt) => {
  const dir = tempDir(tt);
  const src = path.join(dir, 'sparse');
  const dst = path.join(dir, 'copy');
  const MiB = 1024 * 1024;
  const length = 64 * MiB;
  const chunk = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i++) chunk[i] = (i * 7 + 3) & 0xff;
  const fd = fs.openSync(src, 'w');
  fs.writeSync(fd, chunk, 0, MiB, 0); // data at the start
  fs.writeSync(fd, chunk, 0, MiB, 40 * MiB); // data after a hole in the middle
  fs.ftruncateSync(fd, length); // and a trailing hole
  fs.closeSync(fd);

  const srcFd = fs.openSync(src, O_RDONLY);
  const dstFd = fs.openSync(dst, O_RDWR | O_CREAT | O_TRUNC, 0o644);
  tt.teardown(() => { fs.closeSync(srcFd); fs.closeSync(dstFd); });
  const copied = await sys.copyData(srcFd, dstFd, length);

  const s = fs.statSync(src);
  const d = fs.statSync(dst);
  tt.equal(d.size, length, 'size kept, trailing hole included');
  tt.ok(copied === 2 * MiB || copied === length, `copied data bytes (${copied}), or the length when cloned`);
  tt.ok(d.blocks <= s.blocks + 64, `holes kept: ${d.blocks} blocks vs ${s.blocks} in the source`);
  tt.ok(d.blocks < (length / 512) / 8, 'far from a dense copy');
  tt.equal(sha256(dst), sha256(src), 'same content');

  // A dense small file and an empty one.
  const small = path.join(dir, 'small');
  fs.writeFileSync(small, 'x'.repeat(10000));
  const smallFd = fs.openSync(small, O_RDONLY);
  const small2Fd = fs.openSync(path.join(dir, 'small2'), O_RDWR | O_CREAT, 0o644);
  tt.teardown(() => { fs.closeSync(smallFd); fs.closeSync(small2Fd); });
  tt.equal(await sys.copyData(smallFd, small2Fd, 10000), 10000);
  tt.equal(fs.readFileSync(path.join(dir, 'small2'), 'utf8'), 'x'.repeat(10000));
  await tt.rejects(sys.copyData(smallFd, 987654, 10), { code: 'EBADF', errno: -9 });
});

t.test('copyData rejects with ENOSPC on a full tmpfs', async (tt) => {
  const dir = tempDir(tt);
  const small = path.join(dir, 'tmpfs');
  fs.mkdirSync(small);
  const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'strata-native-test', small], { encoding: 'utf8' });
  tt.equal(mount.status, 0, `mount tmpfs: ${mount.stderr}`);
  tt.teardown(() => { spawnSync('umount', [small]); });

  const src = path.join(dir, 'four-mib');
  fs.writeFileSync(src, Buffer.alloc(4 * 1024 * 1024, 1));
  const srcFd = fs.openSync(src, O_RDONLY);
  const dstFd = fs.openSync(path.join(small, 'dst'), O_RDWR | O_CREAT, 0o644);
  tt.teardown(() => { fs.closeSync(srcFd); fs.closeSync(dstFd); });
  await tt.rejects(sys.copyData(srcFd, dstFd, 4 * 1024 * 1024), { code: 'ENOSPC', errno: -28, message: /^ENOSPC: no space left on device, / });
});

t.test('nameToHandle and openByHandle round trip', (tt) => {
  const dir = tempDir(tt);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, 'by handle');
  const { type, handle } = sys.nameToHandle(file);
  tt.type(type, 'number');
  tt.ok(Buffer.isBuffer(handle) && handle.length > 0);

  const mountFd = fs.openSync(dir, O_RDONLY);
  tt.teardown(() => fs.closeSync(mountFd));
  const fd = sys.openByHandle(mountFd, type, handle, O_RDONLY);
  tt.equal(fs.fstatSync(fd).ino, fs.statSync(file).ino, 'same inode');
  tt.equal(fs.readFileSync(fd, 'utf8'), 'by handle');
  fs.closeSync(fd);

  // No follow: a symlink gets its own handle.
  fs.symlinkSync('f', path.join(dir, 'link'));
  tt.notSame(sys.nameToHandle(path.join(dir, 'link')).handle, handle);

  assertErrno(tt, () => sys.nameToHandle(path.join(dir, 'missing')), 'ENOENT', 'name_to_handle_at', path.join(dir, 'missing'));
  fs.unlinkSync(file);
  assertErrno(tt, () => sys.openByHandle(mountFd, type, handle, O_RDONLY), 'ESTALE', 'open_by_handle_at');
  tt.end();
});

t.test('getFsUuid returns 16 bytes or null', (tt) => {
  const dir = tempDir(tt);
  const uuid = sys.getFsUuid(dir);
  tt.ok(uuid === null || (Buffer.isBuffer(uuid) && uuid.length === 16), `got ${uuid?.toString('hex')}`);
  tt.equal(sys.getFsUuid('/proc'), null, 'procfs has no UUID');
  assertErrno(tt, () => sys.getFsUuid(path.join(dir, 'missing')), 'ENOENT', 'open', path.join(dir, 'missing'));
  tt.end();
});

t.test('readdirIno matches readdirSync and lstat', (tt) => {
  const dir = tempDir(tt);
  fs.writeFileSync(path.join(dir, 'file'), '');
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.symlinkSync('file', path.join(dir, 'link'));
  sys.mknod(path.join(dir, 'wh'), S_IFCHR, 0);
  sys.mknod(path.join(dir, 'fifo'), S_IFIFO | 0o600, 0);
  fs.writeFileSync(path.join(dir, 'ünïcødé name'), '');
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(dir, `many-${i}`), '');

  const listing = sys.readdirIno(dir);
  tt.same([...listing.names].sort(), fs.readdirSync(dir).sort());
  tt.equal(listing.types.length, listing.names.length);
  tt.equal(listing.inos.length, listing.names.length);
  const expectedType = (st: fs.Stats) =>
    st.isFile() ? 8 : st.isDirectory() ? 4 : st.isSymbolicLink() ? 10 : st.isCharacterDevice() ? 2 : st.isFIFO() ? 1 : -1;
  let mismatches = 0;
  listing.names.forEach((name, i) => {
    const st = fs.lstatSync(path.join(dir, name));
    if (st.ino !== listing.inos[i] || expectedType(st) !== listing.types[i]) mismatches++;
  });
  tt.equal(mismatches, 0, 'every ino and d_type matches lstat');

  const empty = sys.readdirIno(path.join(dir, 'sub'));
  tt.same(empty.names, []);
  tt.equal(empty.types.length, 0);
  assertErrno(tt, () => sys.readdirIno(path.join(dir, 'file')), 'ENOTDIR', 'opendir', path.join(dir, 'file'));
  assertErrno(tt, () => sys.readdirIno(path.join(dir, 'missing')), 'ENOENT', 'opendir', path.join(dir, 'missing'));
  tt.end();
});
