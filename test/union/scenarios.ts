/**
 * Named scenarios of the differential suite: each is a pair of lower layers (top first) and a list of ops,
 * all relative to the scenario's own dir in the mount, so every scenario runs in the same pair of mounts.
 * The expected outcome of every op is whatever kernel overlayfs (redirect_dir=on,index=on) does.
 */
import type { Op } from '../helpers/ops.js';
import type { LayerSpec } from '../helpers/tree.js';

export interface Scenario {
  name: string;
  /** [top lower, bottom lower]; paths relative to the scenario dir. */
  layers: [LayerSpec, LayerSpec];
  ops: Op[];
  /** Ops run after the candidate has been remounted (and on the still-mounted kernel). */
  afterRemount?: Op[];
}

const long = (c: string, n: number) => c.repeat(n);
const T1 = '1200000000.111111111';
const T2 = '1200000000.987654321';
const MiB = 1024 * 1024;

// Long paths (issue 12 §3): `n` names of 127 bytes, as in the issue (31 of them plus a 127-byte name make 4095 bytes).
const chain = (n: number, c = 'd', len = 127) => Array.from({ length: n }, () => c.repeat(len)).join('/');
const N127 = 'n'.repeat(127);
/** testdir/<31 dirs>: the example dir, made through the mount by relative mkdirs. */
const DEEP = `testdir/${chain(31)}`;
/** Ten levels more: deeper than PATH_MAX below the scenario dir, let alone the layer roots. */
const DEEP2 = `${DEEP}/${chain(10, 'e')}`;
/** A lower dir 25 * 201 bytes below the layer root, built in the lower itself (relative mkdirs). */
const LOWER_DEEP = `lower/${chain(25, 'L', 200)}`;
/** Ops run from inside `dir`, with paths relative to it (see the 'at' op). */
const at = (dir: string, ops: Op[]): Op[] => ops.map((op) => ['at', dir, op]);
const GiB = 1024 * MiB;

export const scenarios: Scenario[] = [
  {
    name: 'lookup-stops-at-whiteout',
    layers: [
      { a: { type: 'whiteout' }, d: { type: 'whiteout' } },
      { a: { type: 'file', content: 'bottom a' }, d: { type: 'dir' }, 'd/x': { type: 'file', content: 'x' }, keep: { type: 'file', content: 'k' } },
    ],
    ops: [['stat', 'a'], ['stat', 'd/x'], ['readdir', '.'], ['create', 'a', 'new a'], ['read', 'a'], ['stat', 'a'], ['mkdir', 'd'], ['readdir', 'd'], ['readdir', '.']],
  },
  {
    name: 'lookup-stops-at-opaque-dir',
    layers: [
      { d: { type: 'dir', opaque: true }, 'd/z': { type: 'file', content: 'z' } },
      { 'd/x': { type: 'file', content: 'x' }, 'd/y': { type: 'dir' } },
    ],
    ops: [['readdir', 'd'], ['stat', 'd/x'], ['stat', 'd/y'], ['read', 'd/z'], ['listxattr', 'd'], ['getxattr', 'd', 'trusted.overlay.opaque'], ['create', 'd/x', 'new'], ['readdir', 'd']],
  },
  {
    name: 'lookup-stops-at-non-dir',
    layers: [
      { n: { type: 'file', content: 'top file' } },
      { 'n/inner': { type: 'file', content: 'hidden' }, m: { type: 'file', content: 'bottom m' }, 'o/inner': { type: 'file', content: 'o' } },
    ],
    ops: [['stat', 'n'], ['stat', 'n/inner'], ['read', 'n'], ['readdir', '.'], ['stat', 'o/inner'], ['readdir', 'o']],
  },
  {
    name: 'readdir-merge-and-dtype',
    layers: [
      { 'm/a': { type: 'dir' }, 'm/a/in': { type: 'file', content: '' }, 'm/e': { type: 'file', content: 'e' }, 'm/shadow': { type: 'file', content: 's' }, 'm/wh': { type: 'whiteout' } },
      { 'm/a': { type: 'file', content: 'file a' }, 'm/b': { type: 'dir' }, 'm/c': { type: 'symlink', target: 'b' }, 'm/p': { type: 'fifo' }, 'm/shadow': { type: 'dir' }, 'm/shadow/x': { type: 'file' }, 'm/wh': { type: 'file', content: 'gone' }, 'm/dev': { type: 'chardev', major: 1, minor: 3 } },
    ],
    ops: [
      ['readdir', 'm'], ['stat', 'm/a'], ['readdir', 'm/a'], ['stat', 'm/shadow'], ['stat', 'm/wh'],
      ['create', 'm/f', 'f'], ['readdir', 'm'], ['unlink', 'm/e'], ['readdir', 'm'], ['mkdir', 'm/e'], ['readdir', 'm'], ['rename', 'm/b', 'm/b2'], ['readdir', 'm'],
    ],
  },
  {
    name: 'unlink-and-rmdir-leave-whiteouts',
    layers: [
      { 'top': { type: 'file', content: 't' } },
      { f: { type: 'file', content: 'f' }, 'd/x': { type: 'file', content: 'x' }, 'e': { type: 'dir' } },
    ],
    ops: [
      ['unlink', 'f'], ['stat', 'f'], ['unlink', 'f'], ['rmdir', 'd'], ['unlink', 'd/x'], ['rmdir', 'd'], ['stat', 'd'], ['rmdir', 'e'], ['unlink', 'top'],
      ['readdir', '.'], ['unlink', 'd'], ['rmdir', 'nonexistent'], ['unlink', '.'], ['create', 'f', 'again'], ['read', 'f'], ['mkdir', 'd'], ['readdir', 'd'],
    ],
  },
  {
    name: 'rmdir-of-dir-that-only-looks-empty',
    layers: [
      { 'd/a': { type: 'whiteout' }, 'd/b': { type: 'whiteout' }, 'e/a': { type: 'whiteout' }, 'o': { type: 'dir', opaque: true } },
      { 'd/a': { type: 'file', content: 'a' }, 'd/b': { type: 'dir' }, 'e/a': { type: 'file' }, 'e/b': { type: 'file' }, 'o/x': { type: 'file' }, 'g/x': { type: 'file' }, 'g/y': { type: 'dir' } },
    ],
    ops: [
      ['readdir', 'd'], ['rmdir', 'd'], ['stat', 'd'], ['readdir', 'e'], ['rmdir', 'e'], ['rmdir', 'o'],
      ['unlink', 'g/x'], ['rmdir', 'g'], ['rmdir', 'g/y'], ['readdir', 'g'], ['rmdir', 'g'], ['readdir', '.'],
    ],
  },
  {
    name: 'mkdir-over-whiteout-is-opaque',
    layers: [
      { 'w': { type: 'whiteout' } },
      { 'd/old': { type: 'file', content: 'old' }, 'd/olddir/x': { type: 'file' }, 'w/hidden': { type: 'file' } },
    ],
    ops: [
      ['unlink', 'd/old'], ['unlink', 'd/olddir/x'], ['rmdir', 'd/olddir'], ['rmdir', 'd'], ['mkdir', 'd', 0o750], ['readdir', 'd'], ['stat', 'd'],
      ['create', 'd/new', 'n'], ['readdir', 'd'], ['getxattr', 'd', 'trusted.overlay.opaque'], ['listxattr', 'd'],
      ['mkdir', 'w'], ['readdir', 'w'], ['stat', 'w/hidden'], ['mkdir', 'd'],
    ],
    afterRemount: [['readdir', 'd'], ['readdir', 'w'], ['stat', 'd/old']],
  },
  {
    name: 'rename-files',
    layers: [
      { 'b': { type: 'file', content: 'B top' } },
      { a: { type: 'file', content: 'A', mode: 0o640 }, 'sub/c': { type: 'file', content: 'C' }, 'b': { type: 'file', content: 'B bottom' } },
    ],
    ops: [
      ['rename', 'a', 'a2'], ['read', 'a2'], ['stat', 'a2'], ['stat', 'a'], ['rename', 'sub/c', 'c'], ['readdir', 'sub'], ['read', 'c'],
      ['create', 'n', 'N'], ['rename', 'n', 'sub/n'], ['rename', 'b', 'sub/b'], ['read', 'sub/b'], ['readdir', '.'], ['readdir', 'sub'],
      ['rename', 'sub/b', 'b'], ['read', 'b'], ['rename', 'missing', 'x'], ['rename', 'a2', 'nodir/x'],
    ],
    afterRemount: [['read', 'b'], ['readdir', '.'], ['readdir', 'sub']],
  },
  {
    name: 'rename-dirs-redirect',
    layers: [
      { 'md/q': { type: 'file', content: 'q top' } },
      { 'ld/x': { type: 'file', content: 'x' }, 'ld/y/z': { type: 'file', content: 'z' }, 'md/p': { type: 'file', content: 'p bottom' } },
    ],
    ops: [
      ['rename', 'ld', 'ld2'], ['readdir', 'ld2'], ['read', 'ld2/y/z'], ['stat', 'ld'], ['mkdir', 'ld'], ['readdir', 'ld'],
      ['mkdir', 'other'], ['rename', 'md', 'other/md2'], ['readdir', 'other/md2'], ['read', 'other/md2/p'], ['read', 'other/md2/q'],
      ['rename', 'ld2', 'ld3'], ['create', 'ld3/new', 'new'], ['readdir', 'ld3'], ['rename', 'ld3/y', 'yy'], ['readdir', 'yy'],
      ['unlink', 'ld3/x'], ['readdir', 'ld3'], ['rename', 'other/md2', 'md'], ['readdir', 'md'], ['readdir', '.'],
    ],
    afterRemount: [['readdir', 'ld3'], ['readdir', 'yy'], ['read', 'yy/z'], ['readdir', 'md'], ['readdir', 'ld'], ['readdir', '.']],
  },
  {
    name: 'rename-over-existing-targets',
    layers: [
      { 'lookempty/a': { type: 'whiteout' } },
      {
        f1: { type: 'file', content: '1' }, f2: { type: 'file', content: '2' }, de: { type: 'dir' }, 'dn/x': { type: 'file' }, dir2: { type: 'dir' },
        fd: { type: 'file', content: 'fd' }, 'lookempty/a': { type: 'file' }, 'srcdir/k': { type: 'file', content: 'k' },
      },
    ],
    ops: [
      ['rename', 'f1', 'f2'], ['read', 'f2'], ['stat', 'f1'], ['rename', 'dir2', 'de'], ['stat', 'dir2'], ['readdir', 'de'],
      ['mkdir', 'dsrc'], ['rename', 'dsrc', 'dn'], ['rename', 'f2', 'dn'], ['rename', 'dn', 'fd'], ['rename', 'f2', 'f2'], ['read', 'f2'],
      ['rename', 'srcdir', 'lookempty'], ['readdir', 'lookempty'], ['read', 'lookempty/k'], ['rename', 'de', 'de/sub'], ['rename', '.', 'x'],
      ['readdir', '.'],
    ],
    afterRemount: [['readdir', 'lookempty'], ['readdir', '.']],
  },
  {
    name: 'hard-links',
    layers: [
      {},
      { h1: { type: 'file', content: 'shared' }, h2: { type: 'hardlink', target: 'h1' }, 'sub/h3': { type: 'hardlink', target: 'h1' }, solo: { type: 'file', content: 's' } },
    ],
    ops: [
      ['stat', 'h1'], ['sameIno', 'h1', 'h2'], ['rememberIno', 'h1', 'h1-before'], ['writeViaOtherLink', 'h1', 'h2', 'changed'], ['read', 'sub/h3'],
      ['stat', 'h2'], ['stat', 'sub/h3'], ['sameIno', 'h1-before', 'h1'], ['sameIno', 'h1', 'sub/h3'],
      ['link', 'h1', 'h4'], ['stat', 'h4'], ['unlink', 'sub/h3'], ['stat', 'h1'],
      ['link', 'solo', 'solo2'], ['stat', 'solo'], ['sameIno', 'solo', 'solo2'], ['append', 'solo2', '+'], ['read', 'solo'],
      ['create', 'u', 'u'], ['link', 'u', 'u2'], ['link', 'u', 'sub/u3'], ['stat', 'u'], ['link', 'sub', 'dirlink'], ['link', 'missing', 'm2'], ['link', 'u', 'h1'],
    ],
    afterRemount: [['stat', 'h1'], ['read', 'h2'], ['sameIno', 'h1', 'h2'], ['sameIno', 'h1-before', 'h1'], ['sameIno', 'solo', 'solo2'], ['stat', 'u']],
  },
  {
    name: 'symlinks',
    layers: [
      {},
      { t: { type: 'file', content: 'target' }, sl: { type: 'symlink', target: 't' }, dangling: { type: 'symlink', target: 'nowhere' }, abs: { type: 'symlink', target: '/etc/hostname' } },
    ],
    ops: [
      ['readlink', 'sl'], ['read', 'sl'], ['stat', 'sl'], ['read', 'dangling'], ['readlink', 'abs'], ['symlink', 'x/y', 'newl'], ['readlink', 'newl'], ['stat', 'newl'],
      ['lchown', 'sl', 1, 2], ['readlink', 'sl'], ['stat', 'sl'], ['rename', 'sl', 'sl2'], ['readlink', 'sl2'], ['symlink', 't', 'sl2'], ['readlink', 't'],
      ['setxattr', 'sl2', 'user.k', 'v'], ['setMtime', 'dangling', T1], ['stat', 'dangling'],
    ],
  },
  {
    name: 'fifos-sockets-devices',
    layers: [
      {},
      { p: { type: 'fifo', mode: 0o640 }, cdev: { type: 'chardev', major: 1, minor: 3 }, bdev: { type: 'blockdev', major: 7, minor: 0 } },
    ],
    ops: [
      ['stat', 'p'], ['stat', 'cdev'], ['stat', 'bdev'], ['mkfifo', 'p2'], ['mknod', 'c2', 'c', 1, 5], ['mknod', 'b2', 'b', 7, 1], ['socket', 's'],
      ['stat', 'p2'], ['stat', 'c2'], ['stat', 'b2'], ['stat', 's'], ['readdir', '.'], ['chmod', 'p', 0o600], ['stat', 'p'], ['rename', 'cdev', 'cdev2'],
      ['stat', 'cdev2'], ['unlink', 'bdev'], ['mkfifo', 'p'], ['read', 'cdev2'], ['link', 'c2', 'c3'], ['stat', 'c2'],
    ],
  },
  {
    name: 'xattrs',
    layers: [
      { od: { type: 'dir', opaque: true } },
      {
        f: { type: 'file', content: 'x', xattrs: { 'user.a': '1', 'trusted.t': 'tv' } }, d: { type: 'dir', xattrs: { 'user.d': 'dv' } }, 'od/x': { type: 'file' },
        g: { type: 'file', content: 'g', xattrs: { 'user.g': 'gv' } },
      },
    ],
    ops: [
      ['listxattr', 'f'], ['getxattr', 'f', 'user.a'], ['getxattr', 'f', 'trusted.t'], ['setxattr', 'f', 'user.b', '2'], ['listxattr', 'f'],
      ['removexattr', 'f', 'user.a'], ['listxattr', 'f'], ['getxattr', 'f', 'user.a'], ['removexattr', 'f', 'user.nonexistent'],
      ['setxattr', 'f', 'trusted.x', 'y'], ['getxattr', 'f', 'trusted.x'], ['setxattr', 'f', 'security.s', 'z'], ['getxattr', 'f', 'security.s'],
      ['removexattr', 'f', 'security.s'], ['setxattr', 'f', 'trusted.overlay.opaque', 'y'], ['setxattr', 'f', 'trusted.overlay.foo', 'y'],
      ['getxattr', 'od', 'trusted.overlay.opaque'], ['listxattr', 'od'], ['removexattr', 'od', 'trusted.overlay.opaque'], ['readdir', 'od'],
      ['listxattr', 'd'], ['setxattr', 'd', 'user.e', 'ev'], ['listxattr', 'd'], ['stat', 'd'], ['setxattr', 'f', 'user.empty', ''], ['getxattr', 'f', 'user.empty'],
      ['setxattr', 'f', 'bogus.ns', 'v'], ['getxattr', 'missing', 'user.a'], ['write', 'g', 'G'], ['listxattr', 'g'],
      ['setxattr', 'f', 'user.big', long('v', 4000)], ['getxattr', 'f', 'user.big'],
    ],
    afterRemount: [['listxattr', 'f'], ['listxattr', 'd'], ['listxattr', 'od'], ['listxattr', 'g']],
  },
  {
    name: 'metadata-copy-up',
    layers: [
      {},
      {
        f: { type: 'file', content: 'data', mode: 0o640, uid: 1000, gid: 1000 }, g: { type: 'file', content: 'g' }, h: { type: 'file', content: 'h' },
        d: { type: 'dir' }, 'd/inner': { type: 'file', content: 'i' }, pd: { type: 'dir', mode: 0o700, uid: 7, gid: 8 }, 'pd/sub': { type: 'dir', mode: 0o750 },
        'pd/sub/f': { type: 'file', content: 'deep', mode: 0o4755 },
      },
    ],
    ops: [
      ['chmod', 'f', 0o600], ['stat', 'f'], ['read', 'f'], ['chown', 'g', 123, 456], ['stat', 'g'], ['setTimes', 'h', T1, T2], ['stat', 'h'], ['atime', 'h'],
      ['chmod', 'd/inner', 0o444], ['stat', 'd'], ['stat', 'd/inner'], ['setMtime', 'd', T2], ['stat', 'd'],
      ['chown', 'pd/sub/f', 5, 6], ['stat', 'pd/sub/f'], ['stat', 'pd'], ['stat', 'pd/sub'], ['chmod', 'missing', 0o600],
    ],
    afterRemount: [['stat', 'f'], ['stat', 'g'], ['stat', 'h'], ['stat', 'pd'], ['stat', 'pd/sub/f']],
  },
  {
    name: 'truncate-and-open-flags',
    layers: [
      {},
      { t: { type: 'file', content: '0123456789' }, a: { type: 'file', content: 'abc' }, e: { type: 'file', content: 'exists' }, o: { type: 'file', content: 'old contents' }, w: { type: 'file', content: 'hello world' } },
    ],
    ops: [
      ['truncate', 't', 4], ['read', 't'], ['truncate', 't', 20], ['read', 't'], ['append', 'a', 'def'], ['read', 'a'], ['append', 'a', 'g'], ['read', 'a'],
      ['createExcl', 'e'], ['createExcl', 'new'], ['stat', 'new'], ['createExcl', 'new'], ['openTrunc', 'o'], ['read', 'o'], ['stat', 'o'],
      ['writeAt', 'w', 6, 'WORLD'], ['read', 'w'], ['writeAt', 'w', 20, 'past'], ['read', 'w'], ['truncate', 'missing', 0], ['truncate', '.', 0],
      ['create', 'c', 'created'], ['truncate', 'c', 3], ['read', 'c'],
    ],
  },
  {
    name: 'long-names',
    layers: [{}, { ['l'.repeat(255)]: { type: 'file', content: 'long' } }],
    ops: [
      ['read', 'l'.repeat(255)], ['create', long('x', 255), 'ok'], ['stat', long('x', 255)], ['create', long('x', 256), 'no'], ['mkdir', long('y', 256)],
      ['stat', long('z', 256)], ['rename', long('x', 255), long('w', 256)], ['symlink', 't', long('s', 256)], ['link', long('x', 255), long('k', 256)],
      ['stat', `${'a/'.repeat(2100)}f`], ['unlink', long('x', 255)], ['readdir', '.'],
    ],
  },
  {
    name: 'sparse-copy-up',
    layers: [{}, { sp: { type: 'file', sparseSize: 16 * MiB } }],
    ops: [
      ['sparseness', 'sp'], ['writeAt', 'sp', 0, 'head'], ['sparseness', 'sp'], ['stat', 'sp'], ['readRange', 'sp', 0, 8],
      ['readRange', 'sp', 16 * MiB - 4096, 4], ['readRange', 'sp', 8 * MiB, 4],
    ],
  },
  {
    name: 'inode-stability',
    layers: [
      { 'd/top': { type: 'file', content: 't' } },
      { f: { type: 'file', content: 'x' }, 'd/g': { type: 'file', content: 'y' }, s: { type: 'symlink', target: 'f' } },
    ],
    ops: [
      ['rememberIno', 'f', 'f0'], ['rememberIno', 'd', 'd0'], ['rememberIno', 'd/g', 'g0'], ['rememberIno', 's', 's0'], ['rememberIno', 'd/top', 'top0'],
      ['dirInoMatchesStat', '.'], ['dirInoMatchesStat', 'd'],
      ['writeAt', 'f', 0, 'z'], ['sameIno', 'f0', 'f'], ['create', 'd/new', 'n'], ['sameIno', 'd0', 'd'], ['chmod', 'd/g', 0o600], ['sameIno', 'g0', 'd/g'],
      ['lchown', 's', 3, 3], ['sameIno', 's0', 's'], ['rememberIno', 'd/new', 'new0'], ['rename', 'd/g', 'g2'], ['sameIno', 'g0', 'g2'],
      ['dirInoMatchesStat', '.'], ['dirInoMatchesStat', 'd'],
    ],
    afterRemount: [
      ['sameIno', 'f0', 'f'], ['sameIno', 'd0', 'd'], ['sameIno', 'g0', 'g2'], ['sameIno', 's0', 's'], ['sameIno', 'top0', 'd/top'], ['sameIno', 'new0', 'd/new'],
      ['dirInoMatchesStat', '.'], ['dirInoMatchesStat', 'd'],
    ],
  },
  {
    name: 'nlink',
    layers: [
      { 'nd/c': { type: 'dir' } },
      { ul: { type: 'file', content: 'x' }, 'nd/a': { type: 'dir' }, 'nd/b': { type: 'dir' }, 'ld/a': { type: 'dir' } },
    ],
    ops: [
      ['stat', 'nd'], ['stat', 'ld'], ['stat', 'nd/c'], ['create', 'up', 'u'], ['unlinkedOpenNlink', 'up'], ['unlinkedOpenNlink', 'ul'], ['stat', 'ul'],
      ['mkdir', 'nd/e'], ['stat', 'nd'], ['mkdir', 'fresh'], ['mkdir', 'fresh/x'], ['stat', 'fresh'],
    ],
  },
  {
    name: 'past-4GiB-fsync-statfs',
    layers: [{}, { low: { type: 'file', content: 'low' } }],
    ops: [
      ['create', 'big', 'start'], ['writeAt', 'big', 5 * GiB, 'far'], ['stat', 'big'], ['readRange', 'big', 5 * GiB, 3], ['readRange', 'big', 4 * GiB, 4],
      ['writeAt', 'low', 4 * GiB + 7, 'beyond'], ['stat', 'low'], ['readRange', 'low', 0, 3], ['readRange', 'low', 4 * GiB + 7, 6],
      ['append', 'low', '+'], ['stat', 'low'], ['truncate', 'low', 2], ['read', 'low'],
      // The 5 GiB file would be read whole by every tree snapshot: it has done its job.
      ['unlink', 'big'], ['fsyncWrite', 'synced', 'data'], ['read', 'synced'], ['statfsTotals', '.'],
    ],
  },
  {
    name: 'open-files-across-copy-up',
    layers: [{}, { r: { type: 'file', content: 'lower r' }, m: { type: 'file', content: 'lower m' }, 'dir/n': { type: 'file', content: 'lower n' } }],
    ops: [
      ['readOldFdAfterWrite', 'r', 'upper r, longer'], ['read', 'r'], ['renameWhileOpen', 'm', 'm2', '+appended'], ['stat', 'm2'],
      ['renameWhileOpen', 'dir/n', 'n2', '+appended'], ['read', 'n2'], ['readdir', 'dir'],
    ],
  },
  {
    // Found by the random sequence (seed 3), minimized: a failed rename of a top-lower dir that shadows a bottom file.
    name: 'rename-lower-dir-over-nonempty-dir',
    layers: [
      { d: { type: 'dir' }, 'd/b': { type: 'dir' }, 'd/d': { type: 'dir' } },
      { b: { type: 'dir' }, 'b/c': { type: 'file', content: 'b/c' }, d: { type: 'dir', mode: 0o700 }, 'd/b': { type: 'file', content: 'd/b' }, 'd/d': { type: 'dir' } },
    ],
    ops: [['rename', 'b', 'd/d'], ['mkdir', 'b'], ['write', 'b/c', 'new'], ['rename', 'd/b', 'b'], ['stat', 'd/b'], ['readdir', 'd'], ['stat', 'd']],
  },
  {
    // All names of a lower hard link share one kernel node, and a change names only the node: the name the caller
    // used must be the one copied up (found by the long-paths scenario: truncating h3 copied up h2, the name
    // looked up last). Cached names (already upper) and uncached ones (still lower) both appear here.
    name: 'hard-link-copy-up-uses-the-name-given',
    layers: [
      {},
      { h1: { type: 'file', content: 'shared' }, h2: { type: 'hardlink', target: 'h1' }, h4: { type: 'hardlink', target: 'h1' }, h5: { type: 'hardlink', target: 'h1' } },
    ],
    ops: [
      ['write', 'h1', 'x'], ['stat', 'h1'], ['stat', 'h2'], ['link', 'h1', 'h3'], ['truncate', 'h3', 2], ['read', 'h2'],
      ['read', 'h2'], ['truncate', 'h1', 1], ['stat', 'h4'], ['truncate', 'h4', 3], ['stat', 'h5'], ['setxattr', 'h1', 'user.a', '1'],
      ['chmod', 'h5', 0o600], ['stat', 'h2'], ['sameIno', 'h1', 'h2'], ['sameIno', 'h4', 'h5'],
    ],
    afterRemount: [['stat', 'h1'], ['stat', 'h2'], ['read', 'h5'], ['sameIno', 'h1', 'h2']],
  },
  {
    // Found by the random sequence (seed 3), minimized: data written through one hard link must be what the
    // other name reads, even when that name's data was read (and cached) before.
    name: 'hard-link-write-after-read-through-other-name',
    layers: [
      { c: { type: 'dir', mode: 0o700 }, 'c/b': { type: 'file', content: 'c/b 581', xattrs: { 'user.r': 'v' } }, d: { type: 'dir' }, 'd/a': { type: 'file', content: 'd/a 776' } },
      { c: { type: 'file', content: 'bottom c' }, d: { type: 'dir', mode: 0o700 }, 'd/a': { type: 'dir' }, 'l/x': { type: 'file', content: 'lower x' }, 'l/y': { type: 'hardlink', target: 'l/x' } },
    ],
    ops: [
      // The minimized sequence as found.
      ['unlink', 'c/b'], ['write', 'd/a', 'w36470'], ['link', 'd/a', 'c/b'], ['link', 'c/b', 'd/c'], ['unlink', 'c/b'], ['read', 'd/a'],
      ['create', 'd/c', 'w66695'], ['read', 'd/a'], ['unlink', 'd/c'], ['read', 'd/a'],
      // Same length on purpose: a cache that is only invalidated by size changes serves the old bytes.
      ['write', 'd/a', 'first1'], ['link', 'd/a', 'd/e'], ['read', 'd/a'], ['create', 'd/e', 'second'], ['read', 'd/a'], ['stat', 'd/a'],
      ['unlink', 'd/e'], ['read', 'd/a'], ['read', 'l/y'], ['write', 'l/x', 'LOWER X'], ['read', 'l/y'], ['append', 'l/y', '+y'], ['read', 'l/x'],
    ],
  },
  {
    // fallocate in each mode FUSE carries, through a file that starts in a lower layer (the first call copies it up).
    name: 'fallocate-modes',
    layers: [{}, { f: { type: 'file', content: 'x'.repeat(20000) }, g: { type: 'file', content: '0123456789'.repeat(2000) }, h: { type: 'file', content: 'h' } }],
    ops: [
      ['fallocate', 'f', 'default', 0, 65536], ['stat', 'f'], ['readRange', 'f', 19990, 20], ['fallocate', 'f', 'keep-size', 65536, 65536], ['stat', 'f'],
      ['fallocate', 'f', 'punch-hole', 4096, 8192], ['readRange', 'f', 4090, 16], ['stat', 'f'], ['fallocate', 'f', 'zero-range', 100, 50], ['readRange', 'f', 95, 60],
      ['fallocate', 'h', 'zero-range', 0, 10], ['read', 'h'], ['fallocate', 'missing', 'punch-hole', 0, 10], ['fallocate', '.', 'default', 0, 10],
      ['fallocate', 'g', 'punch-hole', 0, 4096], ['readRange', 'g', 4090, 16], ['read', 'g'],
    ],
  },
  {
    // COLLAPSE_RANGE and INSERT_RANGE: the kernel passes them to the upper (ext4 wants block-aligned ranges).
    name: 'fallocate-collapse-insert',
    layers: [{}, { g: { type: 'file', content: '0123456789'.repeat(2000) } }],
    ops: [
      ['fallocate', 'g', 'collapse-range', 4096, 4096], ['stat', 'g'], ['readRange', 'g', 4090, 16], ['fallocate', 'g', 'insert-range', 0, 4096], ['stat', 'g'],
      ['readRange', 'g', 4090, 16], ['fallocate', 'g', 'collapse-range', 100, 4096], ['fallocate', 'g', 'insert-range', 4096, 100], ['read', 'g'],
    ],
  },
  {
    // fstat of an open dir after another dir is renamed over it: answered from the open (removed) dir.
    name: 'fstat-dir-renamed-over',
    layers: [{}, { srcd: { type: 'dir', mode: 0o750 }, 'srcd/x': { type: 'file' }, dstd: { type: 'dir', mode: 0o700 }, lsrc: { type: 'dir' } }],
    ops: [
      ['fstatDirAfterRenameOver', 'srcd', 'dstd'], ['readdir', 'dstd'], ['mkdir', 'a', 0o711], ['mkdir', 'b', 0o755], ['fstatDirAfterRenameOver', 'a', 'b'],
      ['mkdir', 'c', 0o705], ['fstatDirAfterRenameOver', 'lsrc', 'c'], ['readdir', '.'],
    ],
  },
  {
    // New entries in a setgid dir get its group, and subdirs its setgid bit, whoever makes them (inode_init_owner).
    name: 'setgid-dir-inheritance',
    layers: [{}, { sg: { type: 'dir', mode: 0o2777, uid: 100, gid: 100 }, 'sg/old': { type: 'dir', mode: 0o2755, uid: 100, gid: 100 }, plain: { type: 'dir', mode: 0o777 } }],
    ops: [
      ['asUser', 100, 101, 'mkdir', 'sg/by-non-member'], ['stat', 'sg/by-non-member'], ['asUser', 100, 100, 'mkdir', 'sg/by-member'], ['stat', 'sg/by-member'],
      ['asUser', 100, 101, 'touch', 'sg/file'], ['stat', 'sg/file'], ['mkdir', 'sg/by-root'], ['stat', 'sg/by-root'], ['asUser', 100, 101, 'mkdir', 'sg/old/sub'],
      ['stat', 'sg/old/sub'], ['asUser', 100, 101, 'mkdir', 'sg/by-member/deeper'], ['stat', 'sg/by-member/deeper'], ['asUser', 100, 101, 'mkdir', 'plain/d'], ['stat', 'plain/d'],
      ['unlink', 'sg/file'], ['asUser', 100, 101, 'mkdir', 'sg/file'], ['stat', 'sg/file'],
    ],
  },
  {
    // setfacl changes the group class like chmod: run by a user outside the file's group it clears setgid.
    name: 'setfacl-clears-setgid',
    layers: [{}, {
      f: { type: 'file', content: 'f', mode: 0o2775, uid: 100, gid: 100 }, g: { type: 'file', content: 'g', mode: 0o2775, uid: 100, gid: 100 },
      d: { type: 'dir', mode: 0o2775, uid: 100, gid: 100 },
    }],
    ops: [
      ['asUser', 100, 101, 'setfacl', 'f', 'u:200:rwx'], ['stat', 'f'], ['asUser', 100, 100, 'setfacl', 'g', 'u:200:rwx'], ['stat', 'g'],
      ['asUser', 100, 101, 'setfacl', 'd', 'u:200:rx'], ['stat', 'd'], ['asUser', 100, 101, 'setfacl', 'f', 'u:201:r'], ['stat', 'f'],
    ],
  },
  {
    // A parent's default ACL replaces the creator's umask (the mode still masks the inherited ACL).
    name: 'default-acl-replaces-umask',
    layers: [{}, { ad: { type: 'dir', mode: 0o777 }, 'ad/sub': { type: 'dir', mode: 0o777 }, plain: { type: 'dir', mode: 0o777 } }],
    ops: [
      ['setfaclDefault', 'ad', 'u::rwx,g::r-x,o::---'], ['withUmask', '722', 'touch', 'ad/f'], ['stat', 'ad/f'], ['getfacl', 'ad/f'],
      ['withUmask', '722', 'mkdir', 'ad/d'], ['stat', 'ad/d'], ['getfacl', 'ad/d'], ['withUmask', '722', 'touch', 'ad/f2', 100, 100], ['stat', 'ad/f2'],
      ['withUmask', '077', 'mkdir', 'ad/d2', 100, 100], ['stat', 'ad/d2'], ['getfacl', 'ad/d2'], ['withUmask', '722', 'touch', 'plain/f'], ['stat', 'plain/f'],
      ['withUmask', '027', 'mkdir', 'plain/d', 100, 100], ['stat', 'plain/d'], ['setfaclDefault', 'ad/sub', 'u::rwx,u:200:rwx,g::r-x,m::rwx,o::r-x'],
      ['withUmask', '777', 'touch', 'ad/sub/f'], ['stat', 'ad/sub/f'], ['getfacl', 'ad/sub/f'], ['withUmask', '777', 'touch', 'ad/sub/g', 100, 100], ['getfacl', 'ad/sub/g'],
      ['withUmask', '000', 'mkdir', 'ad/sub/d', 100, 100], ['getfacl', 'ad/sub/d'],
    ],
  },
  {
    // Issue 12 §3: paths longer than PATH_MAX below the layer roots, reached relatively from inside the mount.
    // The example (a 4095-byte relative path from testdir), every kind of change ten levels deeper, and a
    // lower dir deeper than PATH_MAX below its layer root: lookup, readdir, xattrs, copy-up of data, dirs and hard
    // links, whiteouts, redirects (a relative one, and the absolute one that is too long and gives EXDEV).
    name: 'long-paths',
    layers: [
      { [`${LOWER_DEEP}/wh`]: { type: 'whiteout' }, [`${LOWER_DEEP}/top`]: { type: 'file', content: 'top' }, [`${LOWER_DEEP}/sub/y`]: { type: 'file', content: 'y' } },
      {
        testdir: { type: 'dir' },
        [`${LOWER_DEEP}/f`]: { type: 'file', content: 'deep lower f', mode: 0o640, xattrs: { 'user.x': 'lx' } },
        [`${LOWER_DEEP}/g`]: { type: 'file', content: 'deep lower g' },
        [`${LOWER_DEEP}/h1`]: { type: 'file', content: 'hard' },
        [`${LOWER_DEEP}/h2`]: { type: 'hardlink', target: `${LOWER_DEEP}/h1` },
        [`${LOWER_DEEP}/sub/x`]: { type: 'file', content: 'x' },
        [`${LOWER_DEEP}/sl`]: { type: 'symlink', target: 'f' },
        [`${LOWER_DEEP}/wh`]: { type: 'file', content: 'hidden' },
        [`${LOWER_DEEP}/emptyd`]: { type: 'dir', mode: 0o750 },
      },
    ],
    ops: [
      ...Array.from({ length: 31 }, (_, i): Op => ['at', 'testdir', ['mkdir', chain(i + 1)]]),
      ...at('testdir', [
        ['create', `${chain(31)}/${N127}`, 'issue 12'], ['stat', `${chain(31)}/${N127}`], ['read', `${chain(31)}/${N127}`],
        ['create', `${chain(31)}/${N127}x`, 'one byte too many'], ['readdir', chain(31)],
      ]),
      ...Array.from({ length: 10 }, (_, i): Op => ['at', DEEP, ['mkdir', chain(i + 1, 'e')]]),
      ...at(DEEP2, [
        ['create', 'f', 'a'], ['write', 'f', 'written'], ['append', 'f', '+'], ['stat', 'f'], ['read', 'f'], ['mkdir', 'sub', 0o750], ['create', 'sub/g', 'g'],
        ['rename', 'f', 'sub/f2'], ['rename', 'sub/f2', '../f3'], ['read', '../f3'], ['link', 'sub/g', 'hl'], ['stat', 'hl'], ['sameIno', 'hl', 'sub/g'],
        ['symlink', 'some/target', 's'], ['readlink', 's'], ['chmod', 'sub/g', 0o600], ['chown', 'sub/g', 1, 2], ['setTimes', 'sub/g', T1, T2], ['stat', 'sub/g'],
        ['setxattr', 'sub/g', 'user.k', 'v'], ['setxattr', 's', 'trusted.k', 'sv'], ['getxattr', 'sub/g', 'user.k'], ['listxattr', 'sub/g'], ['listxattr', 's'],
        ['removexattr', 'sub/g', 'user.k'], ['listxattr', 'sub/g'], ['truncate', 'sub/g', 1], ['read', 'sub/g'], ['mkfifo', 'p'], ['mknod', 'c', 'c', 1, 3],
        ['socket', 'so'], ['stat', 'p'], ['readdir', '.'], ['unlink', 'hl'], ['rmdir', 'sub'], ['unlink', 'sub/g'], ['rmdir', 'sub'], ['readdir', '.'],
        ['rename', 'p', `${N127}`], ['statfsTotals', '.'], ['fsyncWrite', 'synced', 'data'],
      ]),
      ...at(DEEP, [['rename', 'eee'.repeat(42) + 'e', 'moved'], ['readdir', 'moved'], ['rename', 'moved', 'eee'.repeat(42) + 'e'], ['readdir', '.']]),
      ...at(LOWER_DEEP, [
        ['readdir', '.'], ['stat', 'f'], ['read', 'f'], ['getxattr', 'f', 'user.x'], ['listxattr', 'f'], ['readlink', 'sl'], ['read', 'sl'], ['stat', 'wh'],
        ['readdir', 'sub'], ['rememberIno', 'g', 'deep-g'], ['write', 'g', 'new g'], ['read', 'g'], ['stat', 'g'], ['sameIno', 'deep-g', 'g'],
        ['setxattr', 'f', 'user.y', 'yv'], ['listxattr', 'f'], ['stat', 'f'], ['chmod', 'sub', 0o700], ['stat', 'sub'], ['readdir', 'sub'],
        ['link', 'h1', 'h3'], ['writeViaOtherLink', 'h1', 'h2', 'changed'], ['stat', 'h2'], ['sameIno', 'h1', 'h2'], ['stat', 'h1'],
        ['unlink', 'top'], ['unlink', 'sub/x'], ['rename', 'sub', 'sub2'], ['readdir', 'sub2'], ['read', 'sub2/y'], ['stat', 'sub'], ['rmdir', 'emptyd'],
        ['mkdir', 'emptyd'], ['readdir', 'emptyd'], ['rename', 'sub2', '../sub3'], ['rename', 'f', '../f-moved'], ['read', '../f-moved'], ['readdir', '.'],
        ['dirInoMatchesStat', '.'],
      ]),
    ],
    afterRemount: [
      ...at(LOWER_DEEP, [['readdir', '.'], ['read', 'g'], ['read', 'h2'], ['sameIno', 'h1', 'h2'], ['sameIno', 'deep-g', 'g'], ['readdir', 'sub2'], ['readdir', 'emptyd']]),
      ...at('testdir', [['read', `${chain(31)}/${N127}`]]),
      ...at(DEEP2, [['readdir', '.'], ['unlink', 'c'], ['rename', 's', '../s'], ['readdir', '.']]),
    ],
  },
];
