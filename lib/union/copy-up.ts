/**
 * Copy-up (fs/overlayfs/copy_up.c): before anything modifies an object that lives in a lower layer, it is
 * copied into the upper layer. The copy is built in the work dir and renamed into place, so the upper
 * layer only ever shows a complete copy. Order matters: data first, then xattrs (writing data clears
 * security.capability), then owner, then mode (chown clears setuid/setgid), then times (everything
 * before touches mtime/ctime).
 */
import fs from 'node:fs';
import { sys, StatIndex } from '../native/index.js';
import { fsError } from '../errors.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type UnionEntry } from './layer.js';
import { layerIno, layerPath } from './lookup.js';
import { encodeOrigin } from './origin.js';
import { indexPathFor, storeUnionNlink, unionNlinkOf } from './index.js';
import { isCopiedXattr } from './xattrs.js';
import type { UnionFs } from './super.js';
import { openReal, parentPath, readlinkReal } from './util.js';

export interface CopyUpOptions {
  /** Skip copying file data (the caller is about to truncate to zero, e.g. open with O_TRUNC). */
  skipData?: boolean;
}

/**
 * Makes sure `entry` is in the upper layer, copying its parents first. Concurrent copy-ups of one path
 * share a single copy (the second caller waits for the first), so racing writers never see a torn file.
 */
export async function copyUp(ufs: UnionFs, entry: UnionEntry, options: CopyUpOptions = {}): Promise<UnionEntry> {
  if (entry.inUpper) return entry;
  if (!ufs.upper) throw fsError('EROFS', entry.path);
  // A caller may hold an entry resolved before some other copy-up (of a child, say) brought this one up.
  const current = ufs.lookup(entry.path);
  if (current.inUpper) return current;
  const pending = ufs.pendingCopyUps.get(entry.path);
  if (pending) return pending;
  const work = copyUpOne(ufs, entry, options);
  ufs.pendingCopyUps.set(entry.path, work);
  try {
    return await work;
  } finally {
    ufs.pendingCopyUps.delete(entry.path);
  }
}

async function copyUpOne(ufs: UnionFs, entry: UnionEntry, options: CopyUpOptions): Promise<UnionEntry> {
  const upper = ufs.upper;
  if (!upper) throw fsError('EROFS', entry.path);
  let parentReal: string | undefined;
  if (entry.path !== '/') {
    parentReal = (await copyUp(ufs, ufs.lookup(parentPath(entry.path)))).top.real;
  }
  const source = entry.top;
  const stat = new Float64Array(StatIndex.length);
  const rc = sys.lstatRaw(source.real, stat);
  if (rc < 0) throw fsError('EIO', `copy-up source ${source.real} vanished`);
  const mode = stat[StatIndex.mode] ?? 0;
  const type = mode & S_IFMT;
  const target = ufs.upperReal(entry.path);
  // A lower file with several names goes through the hard link index, so all its names stay one inode.
  const indexed = type === S_IFREG && (entry.lowerNlink ?? 1) > 1 && ufs.indexDir !== undefined;
  const unionNlink = indexed ? (entry.indexReal ? unionNlinkOf(ufs, entry) : undefined) ?? entry.lowerNlink ?? 1 : 0;
  const temp = ufs.workTemp();
  const realfs = ufs.realfs;
  let madeIndexEntry = false;
  try {
    if (indexed && entry.indexReal !== undefined) {
      // Another name of this file was copied up already: link this name to the same inode.
      realfs.link(entry.indexReal, temp);
    } else {
      if (type === S_IFDIR) {
        realfs.mkdir(temp, 0o700);
      } else if (type === S_IFREG) {
        await copyFileData(ufs, source.real, temp, options.skipData ? 0 : (stat[StatIndex.size] ?? 0));
      } else if (type === S_IFLNK) {
        realfs.symlink(readlinkReal(source.real), temp);
      } else {
        realfs.mknod(temp, mode, stat[StatIndex.rdev] ?? 0);
      }
      copyXattrs(ufs, source.real, temp);
      setOrigin(ufs, entry, temp);
      realfs.lchown(temp, stat[StatIndex.uid] ?? 0, stat[StatIndex.gid] ?? 0);
      if (type !== S_IFLNK) realfs.chmod(temp, mode & 0o7777);
      realfs.utimens(temp, stat[StatIndex.atimeSec] ?? 0, stat[StatIndex.atimeNsec] ?? 0, stat[StatIndex.mtimeSec] ?? 0, stat[StatIndex.mtimeNsec] ?? 0);
      if (indexed) {
        const indexPath = indexPathFor(ufs, source);
        if (indexPath !== undefined) {
          realfs.link(temp, indexPath);
          madeIndexEntry = true;
        }
      }
    }
    // Linking the copy into its parent is not a change users made: keep the parent's times, as the kernel does.
    const parentStat = new Float64Array(StatIndex.length);
    const haveParentTimes = parentReal !== undefined && sys.lstatRaw(parentReal, parentStat) === 0;
    realfs.renameNoReplace(temp, target);
    if (haveParentTimes && parentReal !== undefined) {
      realfs.utimens(parentReal, parentStat[StatIndex.atimeSec] ?? 0, parentStat[StatIndex.atimeNsec] ?? 0, parentStat[StatIndex.mtimeSec] ?? 0, parentStat[StatIndex.mtimeNsec] ?? 0);
    }
    if (indexed) storeUnionNlink(ufs, target, unionNlink);
  } catch (err) {
    try {
      realfs.removeTree(temp);
    } catch {
      // the temp may not exist yet; nothing else to undo
    }
    throw err;
  }
  if (madeIndexEntry) ufs.invalidateHardLinkAliases();
  // A separate copy of one name of a lower hard link (index=off) is a new inode: it must not keep reporting
  // the number the other names still report (the kernel uses the origin's only for indexed or single links).
  let ino = entry.ino;
  if (type !== S_IFDIR && (entry.lowerNlink ?? 1) > 1 && !indexed && sys.lstatRaw(target, stat) === 0) {
    ino = layerIno(ufs, upper, stat[StatIndex.ino] ?? 0);
  }
  const copied: UnionEntry = {
    ...entry,
    ino,
    opaque: false,
    top: layerPath(upper, entry.path),
    inUpper: true,
    lowers: type === S_IFDIR ? [entry.top, ...entry.lowers] : [entry.top],
    lowerRel: entry.lowerRel ?? entry.top.rel,
    indexReal: undefined,
  };
  ufs.cacheEntry(copied);
  ufs.attrsChanged?.(entry.path);
  ufs.logger.debug({ path: entry.path, from: source.real }, 'copied up');
  return copied;
}

async function copyFileData(ufs: UnionFs, sourceReal: string, temp: string, length: number): Promise<void> {
  const sourceFd = openReal(sourceReal, fs.constants.O_RDONLY);
  let targetFd: number | undefined;
  try {
    targetFd = ufs.realfs.openCreate(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    if (length > 0) await sys.copyData(sourceFd, targetFd, length);
    // Like the kernel, make the data durable before the rename publishes it, unless mounted volatile
    // (then a crash may leave a torn copy, which is why the volatile marker forbids reusing the upper).
    if (!ufs.volatile) fs.fsyncSync(targetFd);
  } finally {
    fs.closeSync(sourceFd);
    if (targetFd !== undefined) fs.closeSync(targetFd);
  }
}

function copyXattrs(ufs: UnionFs, from: string, to: string): void {
  let names: string[];
  try {
    names = sys.llistxattr(from);
  } catch (err) {
    if ((err as { code?: string }).code === 'EOPNOTSUPP') return;
    throw err;
  }
  for (const name of names) {
    if (!isCopiedXattr(ufs.xattrs, name)) continue;
    const value = sys.lgetxattr(from, name);
    if (value === null) continue;
    try {
      ufs.realfs.setxattr(to, name, value);
    } catch (err) {
      // Like the kernel, an attribute the upper filesystem refuses (e.g. a foreign security.* label) is
      // skipped rather than failing the whole copy-up.
      const code = (err as { code?: string }).code;
      if (code !== 'EOPNOTSUPP' && code !== 'EPERM' && code !== 'EINVAL') throw err;
      ufs.logger.warn({ name, path: from, code }, 'xattr not copied up');
    }
  }
}

/** Records where the copy came from, in the kernel's format, so st_ino survives the copy-up and remounts. */
function setOrigin(ufs: UnionFs, entry: UnionEntry, temp: string): void {
  let fb: Buffer;
  try {
    fb = encodeOrigin(entry.top.real, ufs.fsUuidOf(entry.top.layer));
  } catch (err) {
    // Filesystems without file handles (EOPNOTSUPP) simply get no origin, as with the kernel.
    ufs.logger.debug({ path: entry.path, err: (err as { code?: string }).code }, 'no origin file handle');
    return;
  }
  ufs.realfs.setxattr(temp, ufs.xattrs.origin, fb);
}
