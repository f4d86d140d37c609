/**
 * The op runner: performs one filesystem operation on a mounted tree and records its outcome as a string,
 * so that the kernel's and the candidate's outcomes compare with plain equality:
 *   'ok', 'ok:<value>' or 'ERR:<errno name>'.
 * Most ops use node:fs in this process (the FUSE servers run in other processes). xattrs, mknod, mkfifo and
 * nanosecond utimensat go through the standard tools (attr, coreutils), whose messages are mapped back to errno
 * names. Values never include inode numbers or recent times; inode identity is compared through labels.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { run } from './sandbox.js';
import { inDir, normalizeTime } from './tree.js';

export type Op =
  | ['create', string, string?]
  | ['createExcl', string]
  | ['write', string, string]
  | ['writeAt', string, number, string]
  | ['append', string, string]
  | ['openTrunc', string]
  | ['truncate', string, number]
  | ['read', string]
  | ['stat', string]
  | ['atime', string]
  | ['readdir', string]
  | ['unlink', string]
  | ['rmdir', string]
  | ['mkdir', string, number?]
  | ['rename', string, string]
  | ['mv', string, string]
  | ['asUser', number, number, 'mkdir' | 'touch' | 'setfacl', string, string?]
  | ['setfaclDefault', string, string]
  | ['withUmask', string, 'touch' | 'mkdir', string, number?, number?]
  | ['getfacl', string]
  | ['fallocate', string, FallocateMode, number, number]
  | ['fstatDirAfterRenameOver', string, string]
  | ['link', string, string]
  | ['symlink', string, string]
  | ['readlink', string]
  | ['chmod', string, number]
  | ['chown', string, number, number]
  | ['lchown', string, number, number]
  | ['setTimes', string, string, string]
  | ['setMtime', string, string]
  | ['mkfifo', string]
  | ['mknod', string, 'c' | 'b', number, number]
  | ['socket', string]
  | ['setxattr', string, string, string]
  | ['getxattr', string, string]
  | ['listxattr', string]
  | ['removexattr', string, string]
  | ['rememberIno', string, string]
  | ['sameIno', string, string]
  | ['sameDevIno', string, string]
  | ['dirInoMatchesStat', string]
  | ['unlinkedOpenNlink', string]
  | ['writeViaOtherLink', string, string, string]
  | ['sparseness', string]
  | ['readRange', string, number, number]
  | ['fsyncWrite', string, string]
  | ['statfsTotals', string]
  | ['readOldFdAfterWrite', string, string]
  | ['renameWhileOpen', string, string, string]
  /**
   * Runs the inner op from inside the dir (relative to the op root, any depth), its paths relative to that dir:
   * how a process cd'd deep inside a mount reaches entries whose full path is PATH_MAX or longer.
   */
  | ['at', string, Op];

export type FallocateMode = 'default' | 'keep-size' | 'punch-hole' | 'zero-range' | 'collapse-range' | 'insert-range';
/** fallocate(1)'s flag for each mode. */
const FALLOCATE_FLAGS: Record<FallocateMode, string[]> = {
  default: [], 'keep-size': ['-k'], 'punch-hole': ['-p'], 'zero-range': ['-z'], 'collapse-range': ['-c'], 'insert-range': ['-i'],
};

/** State that outlives single ops: inode numbers remembered by label (kept across a remount). */
export interface OpContext {
  root: string;
  inodes: Map<string, bigint>;
  /** st_dev remembered with each inode label (compared only within one mount: st_dev changes at remount). */
  devs?: Map<string, bigint>;
}

const MESSAGE_TO_ERRNO: Record<string, string> = {
  'No such file or directory': 'ENOENT',
  'File exists': 'EEXIST',
  'No such attribute': 'ENODATA',
  'No data available': 'ENODATA',
  'Operation not supported': 'EOPNOTSUPP',
  'Operation not permitted': 'EPERM',
  'Permission denied': 'EACCES',
  'Invalid argument': 'EINVAL',
  'Not a directory': 'ENOTDIR',
  'Is a directory': 'EISDIR',
  'File name too long': 'ENAMETOOLONG',
  'Numerical result out of range': 'ERANGE',
  'No space left on device': 'ENOSPC',
  'Read-only file system': 'EROFS',
  'Argument list too long': 'E2BIG',
  'Invalid cross-device link': 'EXDEV',
  'Directory not empty': 'ENOTEMPTY',
  'Input/output error': 'EIO',
  'Transport endpoint is not connected': 'ENOTCONN',
  'Too many levels of symbolic links': 'ELOOP',
  'Disk quota exceeded': 'EDQUOT',
};

/** The errno name in a tool's last stderr line ("tool: path: Message"), or the raw message. */
export function errnoFromToolMessage(stderr: string): string {
  const line = stderr.trim().split('\n').pop() ?? '';
  for (const [message, code] of Object.entries(MESSAGE_TO_ERRNO)) if (line.endsWith(message)) return code;
  return `UNKNOWN(${line})`;
}

function tool(cmd: string, args: string[], cwd: string): string {
  const r = run(cmd, args, { cwd });
  if (r.status === 0) return r.stdout;
  throw Object.assign(new Error(r.stderr), { code: errnoFromToolMessage(r.stderr) });
}

function sha(buf: Buffer): string {
  return crypto.createHash('sha256').update(buf).digest('hex').slice(0, 16);
}

function describeStat(st: fs.BigIntStats): string {
  const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFIFO() ? 'fifo'
    : st.isSocket() ? 'socket' : st.isCharacterDevice() ? 'chardev' : 'blockdev';
  const parts = [type, (Number(st.mode) & 0o7777).toString(8), `${st.uid}:${st.gid}`, `nlink=${st.nlink}`,
    `mtime=${normalizeTime(st.mtimeNs / 1_000_000_000n, st.mtimeNs % 1_000_000_000n)}`];
  if (type === 'file' || type === 'symlink') parts.push(`size=${st.size}`);
  if (type === 'chardev' || type === 'blockdev') parts.push(`rdev=${Number(st.rdev) >> 8}:${Number(st.rdev) & 0xff}`);
  return parts.join(' ');
}

function direntType(d: fs.Dirent): string {
  return d.isFile() ? 'f' : d.isDirectory() ? 'd' : d.isSymbolicLink() ? 'l' : d.isFIFO() ? 'p' : d.isSocket() ? 's'
    : d.isCharacterDevice() ? 'c' : d.isBlockDevice() ? 'b' : '?';
}

function listenOnSocket(file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(file, () => server.close(() => resolve()));
  });
}

/** Performs one op below ctx.root (paths in ops are relative to it). */
export async function runOp(ctx: OpContext, op: Op): Promise<string> {
  const p = (rel: string) => path.join(ctx.root, rel);
  try {
    const value = await perform(ctx, op, p);
    return value === undefined ? 'ok' : `ok:${value}`;
  } catch (err) {
    const code = (err as { code?: string }).code;
    return `ERR:${code ?? String(err)}`;
  }
}

async function perform(ctx: OpContext, op: Op, p: (rel: string) => string): Promise<string | undefined> {
  const cwd = ctx.root;
  switch (op[0]) {
    case 'create': {
      const fd = fs.openSync(p(op[1]), fs.constants.O_CREAT | fs.constants.O_WRONLY | fs.constants.O_TRUNC, 0o644);
      try { if (op[2]) fs.writeSync(fd, op[2]); } finally { fs.closeSync(fd); }
      return undefined;
    }
    case 'createExcl': {
      fs.closeSync(fs.openSync(p(op[1]), fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600));
      return undefined;
    }
    case 'write':
      fs.writeFileSync(p(op[1]), op[2]);
      return undefined;
    case 'writeAt': {
      const fd = fs.openSync(p(op[1]), fs.constants.O_WRONLY);
      try { fs.writeSync(fd, Buffer.from(op[3]), 0, Buffer.byteLength(op[3]), op[2]); } finally { fs.closeSync(fd); }
      return undefined;
    }
    case 'append': {
      const fd = fs.openSync(p(op[1]), fs.constants.O_WRONLY | fs.constants.O_APPEND);
      // O_APPEND must win over the explicit position 0.
      try { fs.writeSync(fd, Buffer.from(op[2]), 0, Buffer.byteLength(op[2]), 0); } finally { fs.closeSync(fd); }
      return undefined;
    }
    case 'openTrunc':
      fs.closeSync(fs.openSync(p(op[1]), fs.constants.O_WRONLY | fs.constants.O_TRUNC));
      return undefined;
    case 'truncate':
      fs.truncateSync(p(op[1]), op[2]);
      return undefined;
    case 'read': {
      const buf = fs.readFileSync(p(op[1]));
      return `${buf.length}:${buf.length <= 64 ? JSON.stringify(buf.toString('latin1')) : sha(buf)}`;
    }
    case 'readRange': {
      const fd = fs.openSync(p(op[1]), 'r');
      try {
        const buf = Buffer.alloc(op[3]);
        const n = fs.readSync(fd, buf, 0, op[3], op[2]);
        return JSON.stringify(buf.subarray(0, n).toString('latin1'));
      } finally { fs.closeSync(fd); }
    }
    case 'stat':
      return describeStat(fs.lstatSync(p(op[1]), { bigint: true }));
    case 'atime': {
      // Separate from 'stat': reads update atime (relatime), so only ops that set it explicitly look at it.
      const st = fs.lstatSync(p(op[1]), { bigint: true });
      return normalizeTime(st.atimeNs / 1_000_000_000n, st.atimeNs % 1_000_000_000n);
    }
    case 'readdir':
      return fs.readdirSync(p(op[1]), { withFileTypes: true }).map((d) => `${d.name}/${direntType(d)}`).sort().join(',');
    case 'unlink':
      fs.unlinkSync(p(op[1]));
      return undefined;
    case 'rmdir':
      fs.rmdirSync(p(op[1]));
      return undefined;
    case 'mkdir':
      fs.mkdirSync(p(op[1]), op[2] ?? 0o755);
      return undefined;
    case 'rename':
      fs.renameSync(p(op[1]), p(op[2]));
      return undefined;
    case 'fallocate': {
      // fallocate(1) opens the file for writing (so it is copied up) and calls fallocate(2) with the mode.
      tool('fallocate', [...FALLOCATE_FLAGS[op[2]], '-o', String(op[3]), '-l', String(op[4]), '--', op[1]], cwd);
      const st = fs.statSync(p(op[1]));
      return `size=${st.size}`;
    }
    case 'fstatDirAfterRenameOver': {
      // An open dir that another dir is renamed over: fstat answers from the open (now removed) dir.
      const fd = fs.openSync(p(op[2]), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      try {
        fs.renameSync(p(op[1]), p(op[2]));
        const st = fs.fstatSync(fd);
        return `${st.isDirectory() ? 'dir' : 'other'} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
      } finally { fs.closeSync(fd); }
    }
    case 'asUser': {
      // A non-root caller (setpriv: no supplementary groups), for what the kernel decides by the caller's ids.
      const [, uid, gid, cmd, target, arg] = op;
      const argv = cmd === 'setfacl' ? ['setfacl', '-m', arg ?? '', '--', target] : [cmd, '--', target];
      tool('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', ...argv], cwd);
      return undefined;
    }
    case 'setfaclDefault':
      tool('setfacl', ['-d', '-m', op[2], '--', op[1]], cwd);
      return undefined;
    case 'withUmask': {
      // Creates with a given umask (and optionally as another user): a parent's default ACL replaces the umask.
      const [, umask, cmd, target, uid, gid] = op;
      const shell = ['sh', '-c', `umask ${umask} && ${cmd} -- "$1"`, 'sh', target];
      tool(uid === undefined ? shell[0]! : 'setpriv', uid === undefined ? shell.slice(1) : [`--reuid=${uid}`, `--regid=${gid ?? uid}`, '--clear-groups', ...shell], cwd);
      return undefined;
    }
    case 'getfacl':
      return tool('getfacl', ['-c', '-p', '--', op[1]], cwd).trim().split('\n').join(',');
    case 'mv':
      // coreutils mv: on EXDEV it copies the tree and deletes the source.
      tool('mv', ['-T', '--', op[1], op[2]], cwd);
      return undefined;
    case 'link':
      fs.linkSync(p(op[1]), p(op[2]));
      return undefined;
    case 'symlink':
      fs.symlinkSync(op[1], p(op[2]));
      return undefined;
    case 'readlink':
      return fs.readlinkSync(p(op[1]));
    case 'chmod':
      fs.chmodSync(p(op[1]), op[2]);
      return undefined;
    case 'chown':
      fs.chownSync(p(op[1]), op[2], op[3]);
      return undefined;
    case 'lchown':
      fs.lchownSync(p(op[1]), op[2], op[3]);
      return undefined;
    case 'setTimes':
      // Two calls so each sets one time with the other UTIME_OMIT: that is what tar and touch -m do.
      tool('touch', ['-h', '-a', '-d', `@${op[2]}`, '--', op[1]], cwd);
      tool('touch', ['-h', '-m', '-d', `@${op[3]}`, '--', op[1]], cwd);
      return undefined;
    case 'setMtime':
      tool('touch', ['-h', '-m', '-d', `@${op[2]}`, '--', op[1]], cwd);
      return undefined;
    case 'mkfifo':
      tool('mkfifo', ['--', op[1]], cwd);
      return undefined;
    case 'mknod':
      tool('mknod', ['--', op[1], op[2], String(op[3]), String(op[4])], cwd);
      return undefined;
    case 'socket':
      await listenOnSocket(p(op[1]));
      return undefined;
    case 'setxattr':
      tool('setfattr', ['-h', '-n', op[2], '-v', op[3], '--', op[1]], cwd);
      return undefined;
    case 'getxattr': {
      const out = tool('getfattr', ['-h', '--only-values', '-e', 'text', '-n', op[2], '--', op[1]], cwd);
      return JSON.stringify(out);
    }
    case 'listxattr': {
      const out = tool('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--', op[1]], cwd);
      return out.split('\n').filter((l) => l && !l.startsWith('#')).sort().join(',');
    }
    case 'removexattr':
      tool('setfattr', ['-h', '-x', op[2], '--', op[1]], cwd);
      return undefined;
    case 'rememberIno': {
      const st = fs.lstatSync(p(op[1]), { bigint: true });
      ctx.inodes.set(op[2], st.ino);
      ctx.devs?.set(op[2], st.dev);
      return undefined;
    }
    case 'sameDevIno': {
      // Like sameIno, but the (st_dev, st_ino) pair: what tar, rsync -H and find -samefile compare.
      const st = fs.lstatSync(p(op[2]), { bigint: true });
      const dev = ctx.devs?.get(op[1]);
      const ino = ctx.inodes.get(op[1]);
      if (dev === undefined || ino === undefined) throw new Error(`sameDevIno: no remembered label ${op[1]}`);
      return dev === st.dev && ino === st.ino ? 'same' : 'different';
    }
    case 'sameIno': {
      // Compares a remembered label (or a path) with a path's current st_ino.
      const remembered = ctx.inodes.get(op[1]) ?? fs.lstatSync(p(op[1]), { bigint: true }).ino;
      const now = fs.lstatSync(p(op[2]), { bigint: true }).ino;
      return remembered === now ? 'same' : 'different';
    }
    case 'dirInoMatchesStat': {
      // `ls -i` (readdir's d_ino) against `stat -c %i` for every entry of a dir.
      const dir = p(op[1]);
      const listed = tool('ls', ['-a', '-i', '-1', '--color=never', '--', dir], cwd).trim().split('\n');
      const mismatched: string[] = [];
      for (const line of listed) {
        const m = /^\s*(\d+) (.*)$/.exec(line);
        if (!m || m[2] === '.' || m[2] === '..') continue;
        const statIno = tool('stat', ['-c', '%i', '--', path.join(dir, m[2]!)], cwd).trim();
        if (statIno !== m[1]) mismatched.push(m[2]!);
      }
      return mismatched.length ? `mismatch:${mismatched.sort().join(',')}` : 'all-match';
    }
    case 'unlinkedOpenNlink': {
      const fd = fs.openSync(p(op[1]), 'r');
      try {
        fs.unlinkSync(p(op[1]));
        const st = fs.fstatSync(fd);
        return `nlink=${st.nlink} size=${st.size}`;
      } finally { fs.closeSync(fd); }
    }
    case 'writeViaOtherLink': {
      // Write through one name, then read through another: hard links share data.
      fs.writeFileSync(p(op[1]), op[3]);
      return fs.readFileSync(p(op[2]), 'latin1');
    }
    case 'fsyncWrite': {
      const fd = fs.openSync(p(op[1]), fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o644);
      try {
        fs.writeSync(fd, op[2]);
        fs.fsyncSync(fd);
        fs.fdatasyncSync(fd);
      } finally { fs.closeSync(fd); }
      return undefined;
    }
    case 'statfsTotals': {
      // Totals only (free space moves): an overlay reports its upper filesystem.
      const st = fs.statfsSync(p(op[1]));
      return `bsize=${st.bsize} blocks=${st.blocks} files=${st.files}`;
    }
    case 'readOldFdAfterWrite': {
      // A read-only fd opened before a copy-up: the kernel serves it the copied-up data since 4.19.
      const fd = fs.openSync(p(op[1]), 'r');
      try {
        fs.writeFileSync(p(op[1]), op[2]);
        const buf = Buffer.alloc(64);
        const n = fs.readSync(fd, buf, 0, 64, 0);
        return `read=${JSON.stringify(buf.subarray(0, n).toString('latin1'))} fstat-size=${fs.fstatSync(fd).size}`;
      } finally { fs.closeSync(fd); }
    }
    case 'renameWhileOpen': {
      // Write through an fd whose file is renamed (and its dir too) in between: the data must follow the file.
      const fd = fs.openSync(p(op[1]), fs.constants.O_WRONLY | fs.constants.O_APPEND);
      try {
        fs.renameSync(p(op[1]), p(op[2]));
        fs.writeSync(fd, op[3]);
      } finally { fs.closeSync(fd); }
      return fs.readFileSync(p(op[2]), 'latin1');
    }
    case 'at':
      // The cwd is walked there in short steps; the inner op's paths (and tools' cwd) are then relative to it.
      return inDir(p(op[1]), () => perform({ ...ctx, root: '.' }, op[2], (rel) => path.join('.', rel)));
    case 'sparseness': {
      const st = fs.statSync(p(op[1]));
      return st.blocks * 512 < st.size / 2 ? 'sparse' : 'dense';
    }
  }
}
