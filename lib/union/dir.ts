/**
 * Namespace changes (fs/overlayfs/dir.c): create, mkdir, mknod, symlink, link, unlink, rmdir, rename.
 *
 * Invariants kept here:
 *  - A name removed from the merged view while a lower layer still has it leaves a whiteout (char 0/0).
 *  - A directory created where a whiteout stood is opaque, so the lower directory it replaces stays hidden.
 *  - New objects that need more than one step (owner, opaque flag, replacing a whiteout) are built in the
 *    work dir and renamed into place; single-step creations by root are made in place, as the kernel does.
 *  - A lower or merged directory that is renamed keeps finding its lower contents through
 *    trusted.overlay.redirect with redirect_dir=on (the default); with any other redirect_dir it is EXDEV.
 */
import fs from 'node:fs';
import { sys, StatIndex } from '../native/index.js';
import { fsError } from '../errors.js';
import { S_IFDIR, S_IFMT, S_IFREG, type UnionEntry } from './layer.js';
import { isWhiteoutStat, lowerPositive } from './lookup.js';
import { isMergedEmpty } from './readdir.js';
import { copyUp } from './copy-up.js';
import { adjustUnionNlink, indexEntryOf, unionNlinkAt } from './index.js';
import type { UnionFs, Caller } from './super.js';
import { splitPath } from './util.js';

const S_ISGID = 0o2000;

type UpperState = 'none' | 'whiteout' | 'present';

function upperState(ufs: UnionFs, real: string): UpperState {
  if (sys.lstatRaw(real, ufs.statBuf) < 0) return 'none';
  return isWhiteoutStat(ufs.statBuf) ? 'whiteout' : 'present';
}

/**
 * Gives a new object built in the work dir what the kernel's inode_init_owner gives it in its parent: the
 * caller's owner, the group of a setgid parent, and for a directory the parent's setgid bit (the work dir
 * has none, so the real mkdir could not inherit it).
 */
function chownToCaller(ufs: UnionFs, real: string, parentReal: string, caller: Caller, isDir: boolean): void {
  const parentSetgid = sys.lstatRaw(parentReal, ufs.statBuf) === 0 && ((ufs.statBuf[StatIndex.mode] ?? 0) & S_ISGID) !== 0;
  const gid = parentSetgid ? (ufs.statBuf[StatIndex.gid] ?? caller.gid) : caller.gid;
  if (caller.uid !== 0 || gid !== 0) ufs.realfs.lchown(real, caller.uid, gid);
  if (isDir && parentSetgid && sys.lstatRaw(real, ufs.statBuf) === 0) {
    ufs.realfs.chmod(real, ((ufs.statBuf[StatIndex.mode] ?? 0) & 0o7777) | S_ISGID);
  }
}

const ACL_ACCESS = 'system.posix_acl_access';
const ACL_DEFAULT = 'system.posix_acl_default';
const ACL_USER_OBJ = 0x01;
const ACL_USER = 0x02;
const ACL_GROUP_OBJ = 0x04;
const ACL_GROUP = 0x08;
const ACL_MASK = 0x10;
const ACL_OTHER = 0x20;

/**
 * What a new object inherits from its real parent: a default ACL replaces the caller's umask (posix_acl_create);
 * without one the umask applies. A mode that arrived masked already (no umask known) is used as it is.
 */
function inheritanceOf(parentReal: string, caller: Caller): { umask: number; defaultAcl: Buffer | null } {
  if (caller.umask === undefined) return { umask: 0, defaultAcl: null };
  let defaultAcl: Buffer | null = null;
  try {
    defaultAcl = sys.lgetxattr(parentReal, ACL_DEFAULT);
  } catch {
    defaultAcl = null; // no ACL support on the upper filesystem
  }
  return { umask: defaultAcl === null ? caller.umask : 0, defaultAcl };
}

/**
 * posix_acl_create_masq: the access ACL a new object with requested `mode` gets from its parent's default ACL
 * (xattr format: u32 version, then {u16 tag, u16 perm, u32 id} entries), the resulting mode, and whether the ACL
 * says no more than the mode (then no access ACL is stored).
 */
function aclFromDefault(defaultAcl: Buffer, requested: number): { acl: Buffer; mode: number; equivalent: boolean } {
  const acl = Buffer.from(defaultAcl);
  let mode = requested;
  let equivalent = true;
  let groupObj = -1;
  let maskObj = -1;
  for (let off = 4; off + 8 <= acl.length; off += 8) {
    const tag = acl.readUInt16LE(off);
    const perm = acl.readUInt16LE(off + 2);
    if (tag === ACL_USER_OBJ) {
      const p = perm & ((mode >> 6) & 7);
      acl.writeUInt16LE(p, off + 2);
      mode = (mode & ~0o700) | (p << 6);
    } else if (tag === ACL_USER || tag === ACL_GROUP) {
      equivalent = false;
    } else if (tag === ACL_GROUP_OBJ) {
      groupObj = off;
    } else if (tag === ACL_OTHER) {
      const p = perm & (mode & 7);
      acl.writeUInt16LE(p, off + 2);
      mode = (mode & ~0o7) | p;
    } else if (tag === ACL_MASK) {
      maskObj = off;
      equivalent = false;
    }
  }
  const groupAt = maskObj >= 0 ? maskObj : groupObj;
  if (groupAt >= 0) {
    const p = acl.readUInt16LE(groupAt + 2) & ((mode >> 3) & 7);
    acl.writeUInt16LE(p, groupAt + 2);
    mode = (mode & ~0o70) | (p << 3);
  }
  return { acl, mode, equivalent };
}

/** Gives an object built in the work dir the ACL and mode its parent's default ACL gives it in place. */
function applyDefaultAcl(ufs: UnionFs, real: string, defaultAcl: Buffer, isDir: boolean): void {
  if (sys.lstatRaw(real, ufs.statBuf) < 0) return;
  const mode = ufs.statBuf[StatIndex.mode] ?? 0;
  if ((mode & S_IFMT) === 0o120000) return; // symlinks have no ACLs
  const result = aclFromDefault(defaultAcl, mode & 0o7777);
  if (!result.equivalent) ufs.realfs.setxattr(real, ACL_ACCESS, result.acl);
  ufs.realfs.chmod(real, result.mode);
  if (isDir) ufs.realfs.setxattr(real, ACL_DEFAULT, defaultAcl);
}

/**
 * Creates a new object at `path` through `make`, which builds it at the real path it is given and may return
 * an fd (for create). Handles copying the parent up, replacing a whiteout, and ownership.
 */
async function createObject(
  ufs: UnionFs,
  path: string,
  caller: Caller,
  isDir: boolean,
  make: (real: string, umask: number) => number | undefined,
): Promise<number | undefined> {
  const { parent: parentPathName, name } = splitPath(path);
  const parent = await copyUp(ufs, ufs.lookupDir(parentPathName));
  ufs.checkName(name);
  const target = ufs.upperReal(path);
  const inherit = inheritanceOf(parent.top.real, caller);
  const state = upperState(ufs, target);
  if (state === 'present') throw fsError('EEXIST', path);
  let fd: number | undefined;
  const needsTemp = state === 'whiteout' || caller.uid !== 0 || caller.gid !== 0;
  if (!needsTemp) {
    // Made in its real parent: the upper filesystem applies a default ACL itself (Strata's umask is 0).
    fd = make(target, inherit.umask);
  } else {
    const temp = ufs.workTemp();
    try {
      fd = make(temp, inherit.umask);
      chownToCaller(ufs, temp, parent.top.real, caller, isDir);
      if (inherit.defaultAcl !== null) applyDefaultAcl(ufs, temp, inherit.defaultAcl, isDir);
      if (state === 'whiteout' && isDir) {
        // A directory cannot replace the whiteout by rename(2): swap the two, then drop the whiteout.
        ufs.realfs.setxattr(temp, ufs.xattrs.opaque, Buffer.from('y'));
        ufs.realfs.exchange(temp, target);
        ufs.realfs.unlink(temp);
      } else if (state === 'whiteout') {
        ufs.realfs.rename(temp, target);
      } else {
        ufs.realfs.renameNoReplace(temp, target);
      }
    } catch (err) {
      if (fd !== undefined) fs.closeSync(fd);
      try {
        ufs.realfs.removeTree(temp);
      } catch {
        // nothing was made
      }
      throw err;
    }
  }
  ufs.invalidatePath(path);
  return fd;
}

export async function create(ufs: UnionFs, path: string, mode: number, flags: number, caller: Caller): Promise<number> {
  const openFlags = (flags & ~(fs.constants.O_TRUNC | fs.constants.O_NOCTTY | fs.constants.O_DIRECT)) | fs.constants.O_CREAT | fs.constants.O_EXCL;
  const fd = await createObject(ufs, path, caller, false, (real, umask) => ufs.realfs.openCreate(real, openFlags, mode & 0o7777 & ~umask));
  if (fd === undefined) throw fsError('EIO', `create ${path} made no fd`);
  return fd;
}

export async function mkdir(ufs: UnionFs, path: string, mode: number, caller: Caller): Promise<void> {
  await createObject(ufs, path, caller, true, (real, umask) => {
    ufs.realfs.mkdir(real, mode & 0o7777 & ~umask);
    return undefined;
  });
}

export async function mknod(ufs: UnionFs, path: string, mode: number, dev: number, caller: Caller): Promise<void> {
  await createObject(ufs, path, caller, false, (real, umask) => {
    if ((mode & S_IFMT) === S_IFREG || (mode & S_IFMT) === 0) {
      fs.closeSync(ufs.realfs.openCreate(real, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, mode & 0o7777 & ~umask));
    } else {
      ufs.realfs.mknod(real, (mode & ~0o7777) | (mode & 0o7777 & ~umask), dev);
    }
    return undefined;
  });
}

export async function symlink(ufs: UnionFs, target: string, path: string, caller: Caller): Promise<void> {
  await createObject(ufs, path, caller, false, (real) => {
    ufs.realfs.symlink(target, real);
    return undefined;
  });
}

export async function link(ufs: UnionFs, existingPath: string, path: string): Promise<void> {
  const existing = ufs.lookup(existingPath);
  if (existing.type === S_IFDIR) throw fsError('EPERM', existingPath);
  const source = await copyUp(ufs, existing);
  const indexEntry = indexEntryOf(ufs, source);
  const unionNlinkBefore = indexEntry === undefined ? undefined : unionNlinkAt(ufs, indexEntry);
  await createObject(ufs, path, { uid: 0, gid: 0 }, false, (real) => {
    ufs.realfs.link(source.top.real, real);
    return undefined;
  });
  if (indexEntry !== undefined && unionNlinkBefore !== undefined) adjustUnionNlink(ufs, indexEntry, unionNlinkBefore, +1);
  ufs.invalidatePath(existingPath);
}

/** Replaces the upper object at `real` (or nothing) with a whiteout, atomically. */
function whiteoutOver(ufs: UnionFs, real: string): void {
  const temp = ufs.workTemp();
  ufs.realfs.makeWhiteout(temp);
  try {
    ufs.realfs.rename(temp, real);
  } catch (err) {
    ufs.realfs.unlink(temp);
    throw err;
  }
}

export async function unlink(ufs: UnionFs, path: string): Promise<void> {
  const entry = ufs.lookup(path);
  if (entry.type === S_IFDIR) throw fsError('EISDIR', path);
  ufs.assertWritable(path);
  const { parent: parentPathName, name } = splitPath(path);
  const parent = ufs.lookupDir(parentPathName);
  const indexEntry = indexEntryOf(ufs, entry);
  const unionNlinkBefore = indexEntry === undefined ? undefined : unionNlinkAt(ufs, indexEntry);
  if (entry.inUpper) {
    if (lowerPositive(ufs, parent, name)) whiteoutOver(ufs, entry.top.real);
    else ufs.realfs.unlink(entry.top.real);
  } else {
    await copyUp(ufs, parent);
    whiteoutOver(ufs, ufs.upperReal(path));
  }
  if (indexEntry !== undefined && unionNlinkBefore !== undefined) adjustUnionNlink(ufs, indexEntry, unionNlinkBefore, -1);
  ufs.invalidatePath(path);
}

export async function rmdir(ufs: UnionFs, path: string): Promise<void> {
  if (path === '/') throw fsError('EBUSY', path);
  const entry = ufs.lookup(path);
  if (entry.type !== S_IFDIR) throw fsError('ENOTDIR', path);
  ufs.assertWritable(path);
  if (!isMergedEmpty(ufs, entry)) throw fsError('ENOTEMPTY', path);
  const { parent: parentPathName, name } = splitPath(path);
  const parent = ufs.lookupDir(parentPathName);
  const needsWhiteout = lowerPositive(ufs, parent, name);
  if (entry.inUpper) {
    // Move the upper dir (which may still hold whiteouts) out of the way in one step, then delete it.
    const temp = ufs.workTemp();
    if (needsWhiteout) {
      ufs.realfs.makeWhiteout(temp);
      ufs.realfs.exchange(temp, entry.top.real);
    } else {
      ufs.realfs.rename(entry.top.real, temp);
    }
    ufs.realfs.removeTree(temp);
  } else {
    await copyUp(ufs, parent);
    whiteoutOver(ufs, ufs.upperReal(path));
  }
  ufs.invalidateTree(path);
}

/** The kernel's redirect_max: a longer redirect is not written, the rename fails with EXDEV instead. */
const REDIRECT_MAX = 256;

/**
 * The redirect a moved directory needs so lookup still finds its lower contents (ovl_set_redirect), or
 * undefined when it has none (nothing below it). Within one parent a bare name is enough: an existing
 * redirect, else the current name. Elsewhere it is absolute, built like ovl_get_redirect from the merged
 * names of the dir and its ancestors, each replaced by its own upper redirect where it has one, up to the
 * root or the first absolute redirect. Merged names, not the real path of some lower dir: lookup walks the
 * path through every layer, redirects found on the way included.
 */
function redirectFor(ufs: UnionFs, entry: UnionEntry, sameParent: boolean): string | undefined {
  if (entry.lowers.length === 0) return undefined;
  if (sameParent && entry.redirect !== undefined) return entry.redirect;
  if (sameParent) return splitPath(entry.path).name;
  if (entry.redirect?.startsWith('/')) return entry.redirect;
  const parts: string[] = [];
  let current: UnionEntry = entry;
  for (;;) {
    const name = (current.inUpper ? current.redirect : undefined) ?? splitPath(current.path).name;
    parts.unshift(name);
    if (name.startsWith('/')) break;
    const parentPath = splitPath(current.path).parent;
    if (parentPath === '/') {
      parts.unshift('');
      break;
    }
    current = ufs.lookupDir(parentPath);
  }
  const redirect = parts.join('/');
  if (Buffer.byteLength(redirect) > REDIRECT_MAX) throw fsError('EXDEV', `${entry.path}: redirect longer than ${REDIRECT_MAX} bytes`);
  return redirect;
}

export async function rename(ufs: UnionFs, from: string, to: string): Promise<void> {
  if (from === to) return;
  ufs.assertWritable(from);
  const { parent: fromParentPath, name: fromName } = splitPath(from);
  const { parent: toParentPath, name: toName } = splitPath(to);
  ufs.checkName(toName);
  const source = ufs.lookup(from);
  const toParent = ufs.lookupDir(toParentPath);
  const dest = ufs.lookupChildCached(toParent, toName);
  const sourceIsDir = source.type === S_IFDIR;
  // A destination dir purely in the upper layer holds no whiteouts, so the real rename itself answers
  // ENOTEMPTY, after the copy-up (as on the kernel, where only a merged destination is checked up front).
  const destPureUpper = dest !== undefined && dest.inUpper && dest.lowers.length === 0 && dest.redirect === undefined;
  if (dest) {
    const destIsDir = dest.type === S_IFDIR;
    if (sourceIsDir && !destIsDir) throw fsError('ENOTDIR', to);
    if (!sourceIsDir && destIsDir) throw fsError('EISDIR', to);
    if (!sourceIsDir && dest.ino === source.ino) return; // two names of one inode: POSIX says do nothing
  }
  // The VFS refuses moving a dir into itself before the filesystem is asked (so before any EXDEV below).
  if (sourceIsDir && to.startsWith(`${from}/`)) throw fsError('EINVAL', to);
  // Without redirect_dir=on a merged or lower dir cannot be moved (ovl_can_move): mv then copies and deletes.
  if (sourceIsDir && ufs.redirectMode !== 'on' && (!source.inUpper || source.lowers.length > 0)) throw fsError('EXDEV', from);
  if (dest && dest.type === S_IFDIR && !destPureUpper && !isMergedEmpty(ufs, dest)) throw fsError('ENOTEMPTY', to);

  const movedDir = await copyUp(ufs, source);
  // Looked up again: copying the source up may have copied this parent up too.
  const toParentUpper = await copyUp(ufs, ufs.lookupDir(toParentPath));
  const fromParent = ufs.lookupDir(fromParentPath);
  const needsWhiteoutAtSource = lowerPositive(ufs, fromParent, fromName);
  const sourceReal = movedDir.top.real;
  const targetReal = ufs.upperReal(to);

  if (sourceIsDir) {
    const sameParent = fromParentPath === toParentPath;
    const redirect = redirectFor(ufs, movedDir, sameParent);
    if (redirect !== undefined && redirect !== movedDir.redirect) {
      ufs.realfs.setxattr(sourceReal, ufs.xattrs.redirect, Buffer.from(redirect));
    } else if (redirect === undefined && !movedDir.opaque && lowerPositive(ufs, toParentUpper, toName)) {
      // A directory with nothing below it, moved over a name a lower layer has, must not merge with it.
      ufs.realfs.setxattr(sourceReal, ufs.xattrs.opaque, Buffer.from('y'));
    }
  }
  if (dest && dest.type === S_IFDIR && dest.inUpper && !destPureUpper) {
    // The destination is empty in the merged view, so its upper dir holds only whiteouts: clear them.
    for (const name of sys.readdirIno(dest.top.real).names) ufs.realfs.unlink(`${dest.top.real}/${name}`);
  }
  const targetState = upperState(ufs, targetReal);
  if (sourceIsDir && targetState === 'whiteout') {
    ufs.realfs.exchange(sourceReal, targetReal);
    if (!needsWhiteoutAtSource) ufs.realfs.unlink(sourceReal);
  } else if (needsWhiteoutAtSource) {
    renameLeavingWhiteout(ufs, sourceReal, targetReal);
  } else {
    ufs.realfs.rename(sourceReal, targetReal);
  }
  ufs.invalidateTree(from);
  ufs.invalidateTree(to);
}

function renameLeavingWhiteout(ufs: UnionFs, from: string, to: string): void {
  try {
    ufs.realfs.renameWhiteout(from, to);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== 'EINVAL' && code !== 'EOPNOTSUPP') throw err;
    // The upper filesystem has no RENAME_WHITEOUT: rename, then put the whiteout in place.
    ufs.realfs.rename(from, to);
    whiteoutOver(ufs, from);
  }
}

/**
 * renameat2(RENAME_EXCHANGE): both names stay, their objects swap (ovl_rename with RENAME_EXCHANGE). Both
 * are copied up and swapped atomically in the upper layer. A directory that has lower layers below it gets
 * the redirect its new place needs; one without, landing on a name a lower layer has, becomes opaque.
 */
export async function exchange(ufs: UnionFs, a: string, b: string): Promise<void> {
  ufs.assertWritable(a);
  const first = ufs.lookup(a);
  const second = ufs.lookup(b);
  if (a === b) return;
  // Without redirect_dir=on neither side may be a lower or merged dir (ovl_can_move), as in rename.
  for (const [p, entry] of [[a, first], [b, second]] as const) {
    if (entry.type === S_IFDIR && ufs.redirectMode !== 'on' && (!entry.inUpper || entry.lowers.length > 0)) throw fsError('EXDEV', p);
  }
  const { parent: aParent, name: aName } = splitPath(a);
  const { parent: bParent, name: bName } = splitPath(b);
  await copyUp(ufs, first);
  await copyUp(ufs, second);
  // Looked up again: each copy-up may have copied the other's parents.
  const upA = ufs.lookup(a);
  const upB = ufs.lookup(b);
  const sameParent = aParent === bParent;
  const prepare = (entry: UnionEntry, toParentPath: string, toName: string) => {
    if (entry.type !== S_IFDIR) return;
    const redirect = redirectFor(ufs, entry, sameParent);
    if (redirect !== undefined && redirect !== entry.redirect) {
      ufs.realfs.setxattr(entry.top.real, ufs.xattrs.redirect, Buffer.from(redirect));
    } else if (redirect === undefined && !entry.opaque && lowerPositive(ufs, ufs.lookupDir(toParentPath), toName)) {
      ufs.realfs.setxattr(entry.top.real, ufs.xattrs.opaque, Buffer.from('y'));
    }
  };
  prepare(upA, bParent, bName);
  prepare(upB, aParent, aName);
  ufs.realfs.exchange(upA.top.real, upB.top.real);
  ufs.invalidateTree(a);
  ufs.invalidateTree(b);
}
