/**
 * The FUSE operation table handed to fuse-native: it translates each callback-style request into a call on
 * UnionFs and the result (or error) back into what fuse-native expects. This file and mount.ts are the only
 * code that knows fuse-native's conventions; errno.ts is the only code that makes errnos.
 */
import fs from 'node:fs';
import type { Logger } from '../log.js';
import { sys, StatIndex } from '../native/index.js';
import type { UnionFs, Caller } from '../union/super.js';
import { toNegativeErrno } from './errno.js';
import { encodeDirentStat, encodeStat } from './stat.js';
import { O_PATH } from '../union/util.js';

type Done = (result: number) => void;
type DoneWith<T> = (result: number, value?: T) => void;
type OpenDone = (result: number, fd?: number, keepCache?: boolean) => void;

/** Supplies the requesting process's credentials for the current request, when the binding knows them. */
export type CallerSource = () => Caller;

const ROOT_CALLER: Caller = { uid: 0, gid: 0 };
/**
 * libfuse (without hard_remove) hides a file that is unlinked while open by renaming it to this name and
 * unlinking that name on the last release. We turn the rename into the real unlink and keep an O_PATH fd,
 * so fstat on the open file still works (nlink 0, as on kernel overlayfs) and the upper dir gets no extra file.
 */
const LIBFUSE_HIDDEN_NAME = /\/\.fuse_hidden[0-9a-f]{16}$/;

interface HiddenFile {
  fd: number;
  ino: number;
}
const S_IFDIR = 0o040000;

/**
 * What every group of operations shares for one mount: the union, the caller of the current request, one stat
 * buffer (requests run one at a time on the JS thread, and each op finishes with the buffer before it yields), the
 * files libfuse hid on unlink, and the error and completion helpers.
 */
function createOpsContext(ufs: UnionFs, logger: Logger, callerOf: CallerSource) {
  const statBuf = new Float64Array(StatIndex.length);
  const hiddenFiles = new Map<string, HiddenFile>();
  /**
   * The kernel may keep a file's pages across opens (keep_cache) only where nothing but this name can change
   * them: a lower file (its data is immutable; a copy-up of it carries the same bytes, and later writes come
   * through this same name) with one link. Upper files and files with several names get fresh pages at every
   * open, because the high-level libfuse API gives each name its own kernel inode and page cache (found by the
   * differential suite, seed 3: stale pages of an upper file after changes through another name).
   */
  const keepsPageCache = (fd: number): boolean =>
    ufs.isLowerReader(fd) && sys.fstatRaw(fd, statBuf) === 0 && statBuf[StatIndex.nlink] === 1;
  const statHidden = (hidden: HiddenFile): Uint32Array => {
    if (sys.fstatRaw(hidden.fd, statBuf) < 0) throw Object.assign(new Error('hidden file fd'), { code: 'EIO' });
    statBuf[StatIndex.ino] = hidden.ino;
    return encodeStat(statBuf);
  };
  const hideUnlinkedOpenFile = async (from: string, hiddenPath: string) => {
    const entry = ufs.lookup(from);
    const fd = fs.openSync(entry.top.real, O_PATH | fs.constants.O_NOFOLLOW);
    try {
      await ufs.unlink(from);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    hiddenFiles.set(hiddenPath, { fd, ino: entry.ino });
  };
  const fail = (err: unknown, op: string, path: string) => toNegativeErrno(err, logger, op, path);

  /** Runs a synchronous operation and reports 0 or the errno. */
  const run = (op: string, path: string, cb: Done, fn: () => void) => {
    try {
      fn();
      cb(0);
    } catch (err) {
      cb(fail(err, op, path));
    }
  };
  /** Runs an asynchronous operation (anything that may copy up) and reports 0 or the errno. */
  const runAsync = (op: string, path: string, cb: Done, fn: () => Promise<unknown>) => {
    fn().then(
      () => cb(0),
      (err: unknown) => cb(fail(err, op, path)),
    );
  };
  return { ufs, callerOf, statBuf, hiddenFiles, keepsPageCache, statHidden, hideUnlinkedOpenFile, fail, run, runAsync };
}

type OpsContext = ReturnType<typeof createOpsContext>;

/** Attributes of an existing object: stat, times, mode, owner, size, link target, and the filesystem's. */
function attrOps({ ufs, statBuf, hiddenFiles, statHidden, fail, run, runAsync }: OpsContext) {
  return {
    getattr(path: string, cb: DoneWith<Uint32Array>) {
      try {
        const hidden = hiddenFiles.get(path);
        if (hidden) return cb(0, statHidden(hidden));
        ufs.getattr(path, statBuf);
        cb(0, encodeStat(statBuf));
      } catch (err) {
        cb(fail(err, 'getattr', path));
      }
    },
    fgetattr(path: string, fd: number, cb: DoneWith<Uint32Array>) {
      try {
        const hidden = hiddenFiles.get(path);
        if (hidden) return cb(0, statHidden(hidden));
        ufs.fgetattr(path, fd, statBuf);
        cb(0, encodeStat(statBuf));
      } catch (err) {
        cb(fail(err, 'fgetattr', path));
      }
    },
    readlink(path: string, cb: DoneWith<string>) {
      try {
        cb(0, ufs.readlink(path));
      } catch (err) {
        cb(fail(err, 'readlink', path));
      }
    },
    truncate(path: string, size: number, cb: Done) {
      runAsync('truncate', path, cb, () => ufs.truncate(path, size));
    },
    ftruncate(path: string, fd: number, size: number, cb: Done) {
      run('ftruncate', path, cb, () => ufs.ftruncate(fd, size));
    },
    utimens(path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number, cb: Done) {
      runAsync('utimens', path, cb, () => ufs.utimens(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec));
    },
    chmod(path: string, mode: number, cb: Done) {
      runAsync('chmod', path, cb, () => ufs.chmod(path, mode));
    },
    chown(path: string, uid: number, gid: number, cb: Done) {
      runAsync('chown', path, cb, () => ufs.chown(path, uid, gid));
    },
    statfs(path: string, cb: DoneWith<object>) {
      try {
        cb(0, ufs.statfs());
      } catch (err) {
        cb(fail(err, 'statfs', path));
      }
    },
  };
}

/** Names in directories: creating, linking, removing and renaming entries (lib/union/dir.ts). */
function entryOps({ ufs, callerOf, hiddenFiles, hideUnlinkedOpenFile, run, runAsync }: OpsContext) {
  return {
    mknod(path: string, mode: number, dev: number, cb: Done) {
      runAsync('mknod', path, cb, () => ufs.mknod(path, mode, dev, callerOf()));
    },
    mkdir(path: string, mode: number, cb: Done) {
      runAsync('mkdir', path, cb, () => ufs.mkdir(path, mode, callerOf()));
    },
    symlink(target: string, path: string, cb: Done) {
      runAsync('symlink', path, cb, () => ufs.symlink(target, path, callerOf()));
    },
    link(existing: string, path: string, cb: Done) {
      runAsync('link', path, cb, () => ufs.link(existing, path));
    },
    unlink(path: string, cb: Done) {
      const hidden = hiddenFiles.get(path);
      if (hidden) {
        hiddenFiles.delete(path);
        return run('unlink', path, cb, () => fs.closeSync(hidden.fd));
      }
      runAsync('unlink', path, cb, () => ufs.unlink(path));
    },
    rmdir(path: string, cb: Done) {
      runAsync('rmdir', path, cb, () => ufs.rmdir(path));
    },
    rename(from: string, to: string, cb: Done) {
      if (LIBFUSE_HIDDEN_NAME.test(to)) return runAsync('rename', from, cb, () => hideUnlinkedOpenFile(from, to));
      runAsync('rename', from, cb, () => ufs.rename(from, to));
    },
  };
}

/** Open files: open/create, data, sync and release (lib/union/file.ts). */
function fileOps({ ufs, callerOf, keepsPageCache, fail, run }: OpsContext) {
  return {
    open(path: string, flags: number, cb: OpenDone) {
      ufs.open(path, flags).then(
        (fd) => cb(0, fd, keepsPageCache(fd)),
        (err: unknown) => cb(fail(err, 'open', path)),
      );
    },
    create(path: string, mode: number, flags: number, cb: OpenDone) {
      ufs.create(path, mode, flags, callerOf()).then(
        (fd) => cb(0, fd, false),
        (err: unknown) => cb(fail(err, 'create', path)),
      );
    },
    read(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: Done) {
      try {
        cb(ufs.read(path, fd, buffer, length, position));
      } catch (err) {
        cb(fail(err, 'read', path));
      }
    },
    write(path: string, fd: number, buffer: Buffer, length: number, position: number, cb: Done) {
      try {
        cb(ufs.write(fd, buffer, length, position));
      } catch (err) {
        cb(fail(err, 'write', path));
      }
    },
    release(path: string, fd: number, cb: Done) {
      run('release', path, cb, () => ufs.release(fd));
    },
    fsync(path: string, dataSync: number, fd: number, cb: Done) {
      run('fsync', path, cb, () => ufs.fsync(fd, dataSync !== 0));
    },
  };
}

/** Open directories: listing and sync (lib/union/readdir.ts). */
function dirOps({ ufs, fail, run }: OpsContext) {
  return {
    readdir(path: string, cb: (result: number, names?: string[], stats?: Uint32Array[]) => void) {
      try {
        const { entries, dirIno, parentIno } = ufs.readdir(path);
        const names = ['.', '..'];
        const stats = [encodeDirentStat(S_IFDIR, dirIno), encodeDirentStat(S_IFDIR, parentIno)];
        for (const entry of entries) {
          names.push(entry.name);
          stats.push(encodeDirentStat(entry.type, entry.ino));
        }
        cb(0, names, stats);
      } catch (err) {
        cb(fail(err, 'readdir', path));
      }
    },
    fsyncdir(path: string, dataSync: number, _fd: number, cb: Done) {
      run('fsyncdir', path, cb, () => ufs.fsyncdir(path, dataSync !== 0));
    },
  };
}

/** Extended attributes (lib/union/xattrs.ts). */
function xattrOps({ ufs, callerOf, fail, runAsync }: OpsContext) {
  return {
    getxattr(path: string, name: string, _position: number, cb: DoneWith<Buffer>) {
      try {
        cb(0, ufs.getxattr(path, name));
      } catch (err) {
        cb(fail(err, 'getxattr', path));
      }
    },
    listxattr(path: string, cb: DoneWith<string[]>) {
      try {
        cb(0, ufs.listxattr(path));
      } catch (err) {
        cb(fail(err, 'listxattr', path));
      }
    },
    setxattr(path: string, name: string, value: Buffer, _position: number, flags: number, cb: Done) {
      // fuse-native hands over a view of the request buffer that is reused after we answer: copy it.
      const copy = Buffer.from(value);
      runAsync('setxattr', path, cb, () => ufs.setxattr(path, name, copy, flags, callerOf()));
    },
    removexattr(path: string, name: string, cb: Done) {
      runAsync('removexattr', path, cb, () => ufs.removexattr(path, name));
    },
  };
}

/**
 * The operation table handed to fuse-native, grouped by concern the way lib/union is split: attributes, entries,
 * open files, open directories, xattrs.
 */
export function createFuseOps(ufs: UnionFs, logger: Logger, callerOf: CallerSource = () => ROOT_CALLER) {
  const context = createOpsContext(ufs, logger, callerOf);
  return { ...attrOps(context), ...entryOps(context), ...fileOps(context), ...dirOps(context), ...xattrOps(context) };
}
