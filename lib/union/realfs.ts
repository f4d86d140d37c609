/**
 * Wrappers for every change made to a real layer (like the ovl_do_* helpers): each call is logged at debug
 * level with its result, so a trace of what Strata did to the upper dir can be read back from the logs.
 * Errors are Node-style (err.code is the errno name) and pass through unchanged.
 *
 * Paths may be of any length (see util.ts PATH_MAX): a long one goes to the addon's *at calls, which walk it in
 * openat hops; the others keep Node's plain path calls. The addon's own calls (renameat2, mknod, xattrs,
 * utimensat) take any length themselves.
 */
import fs from 'node:fs';
import type { Logger } from '../log.js';
import { sys, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT } from '../native/index.js';
import { isLongPath, openReal } from './util.js';

const WHITEOUT_MODE = 0o020000; // S_IFCHR, permission bits 0 as the kernel makes them

export class RealFs {
  private readonly logger: Logger;
  private readonly debug: boolean;

  constructor(logger: Logger) {
    this.logger = logger;
    this.debug = logger.isLevelEnabled('debug');
  }

  private trace(op: string, args: Record<string, unknown>, err?: unknown): void {
    if (!this.debug) return;
    if (err) this.logger.debug({ op, ...args, err: (err as { code?: string }).code ?? String(err) }, 'real fs call failed');
    else this.logger.debug({ op, ...args }, 'real fs call');
  }

  private run<T>(op: string, args: Record<string, unknown>, fn: () => T): T {
    try {
      const result = fn();
      this.trace(op, args);
      return result;
    } catch (err) {
      this.trace(op, args, err);
      throw err;
    }
  }

  mkdir(path: string, mode: number): void {
    this.run('mkdir', { path, mode }, () => (isLongPath(path) ? sys.mkdir(path, mode) : fs.mkdirSync(path, { mode })));
  }

  rmdir(path: string): void {
    this.run('rmdir', { path }, () => (isLongPath(path) ? sys.rmdir(path) : fs.rmdirSync(path)));
  }

  unlink(path: string): void {
    this.run('unlink', { path }, () => (isLongPath(path) ? sys.unlink(path) : fs.unlinkSync(path)));
  }

  /** Removes a tree that only Strata writes to (a directory moved into the work dir), of any depth (fd-based, never a full path). */
  removeTree(path: string): void {
    this.run('removeTree', { path }, () => sys.removeTree(path));
  }

  rename(from: string, to: string): void {
    this.run('rename', { from, to }, () => (isLongPath(from) || isLongPath(to) ? sys.renameat2(from, to, 0) : fs.renameSync(from, to)));
  }

  renameNoReplace(from: string, to: string): void {
    this.run('rename_noreplace', { from, to }, () => sys.renameat2(from, to, RENAME_NOREPLACE));
  }

  exchange(a: string, b: string): void {
    this.run('rename_exchange', { a, b }, () => sys.renameat2(a, b, RENAME_EXCHANGE));
  }

  /** Moves `from` to `to` and leaves a whiteout at `from`, in one step. */
  renameWhiteout(from: string, to: string): void {
    this.run('rename_whiteout', { from, to }, () => sys.renameat2(from, to, RENAME_WHITEOUT));
  }

  mknod(path: string, mode: number, dev: number): void {
    this.run('mknod', { path, mode, dev }, () => sys.mknod(path, mode, dev));
  }

  /** A whiteout is a character device 0/0, exactly as kernel overlayfs makes it. */
  makeWhiteout(path: string): void {
    this.mknod(path, WHITEOUT_MODE, 0);
  }

  symlink(target: string, path: string): void {
    this.run('symlink', { target, path }, () => (isLongPath(path) ? sys.symlink(target, path) : fs.symlinkSync(target, path)));
  }

  link(existing: string, path: string): void {
    this.run('link', { existing, path }, () => (isLongPath(existing) || isLongPath(path) ? sys.link(existing, path) : fs.linkSync(existing, path)));
  }

  openCreate(path: string, flags: number, mode: number): number {
    return this.run('open_create', { path, flags, mode }, () => openReal(path, flags, mode));
  }

  lchown(path: string, uid: number, gid: number): void {
    this.run('lchown', { path, uid, gid }, () => (isLongPath(path) ? sys.lchown(path, uid, gid) : fs.lchownSync(path, uid, gid)));
  }

  chmod(path: string, mode: number): void {
    this.run('chmod', { path, mode }, () => (isLongPath(path) ? sys.chmod(path, mode) : fs.chmodSync(path, mode)));
  }

  truncate(path: string, size: number): void {
    this.run('truncate', { path, size }, () => (isLongPath(path) ? sys.truncate(path, size) : fs.truncateSync(path, size)));
  }

  utimens(path: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void {
    this.run('utimensat', { path }, () => sys.utimensat(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, true));
  }

  setxattr(path: string, name: string, value: Buffer, flags = 0): void {
    this.run('setxattr', { path, name }, () => sys.lsetxattr(path, name, value, flags));
  }

  removexattr(path: string, name: string): void {
    this.run('removexattr', { path, name }, () => sys.lremovexattr(path, name));
  }

  /** fsync(2) of a real directory, so that the names created, renamed or removed in it are on disk. */
  fsyncDir(path: string, dataOnly: boolean): void {
    this.run('fsyncdir', { path, dataOnly }, () => {
      const fd = openReal(path, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
      try {
        if (dataOnly) fs.fdatasyncSync(fd);
        else fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    });
  }
}
