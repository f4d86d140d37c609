/**
 * The hard link index (index=on in kernel overlayfs): a lower file with several names is copied up once,
 * into <workdir>/index/<hex of its origin file handle>, and every name that gets copied up later is a hard
 * link to that index entry. Lookup of a name that is still only in a lower layer finds the index entry too,
 * so all names keep showing the same data after any one of them was written.
 *
 * The union's link count of such an inode is kept, as the kernel keeps it, in trusted.overlay.nlink on the
 * upper inode: "U+n" means the upper inode's own st_nlink plus n ("L+n": the lower inode's plus n).
 */
import { sys, StatIndex } from '../native/index.js';
import type { LayerPath, UnionEntry } from './layer.js';
import { encodeOrigin } from './origin.js';
import type { UnionFs } from './super.js';

/** Where the index entry for a lower object would be, or undefined when it has no file handle. */
export function indexPathFor(ufs: UnionFs, lower: LayerPath): string | undefined {
  if (!ufs.indexDir) return undefined;
  try {
    return `${ufs.indexDir}/${encodeOrigin(lower.real, ufs.fsUuidOf(lower.layer)).toString('hex')}`;
  } catch {
    return undefined;
  }
}

/** The existing index entry for a lower hard link, if one of its names was copied up already. */
export function findIndexEntry(ufs: UnionFs, lower: LayerPath): string | undefined {
  const candidate = indexPathFor(ufs, lower);
  if (candidate === undefined) return undefined;
  return sys.lstatRaw(candidate, ufs.statBuf) === 0 ? candidate : undefined;
}

/** The union link count stored on `real`, or undefined when it carries none. */
export function storedUnionNlink(ufs: UnionFs, real: string, realNlink: number, lowerNlink?: number): number | undefined {
  const value = sys.lgetxattr(real, ufs.xattrs.nlink)?.toString('latin1');
  if (!value) return undefined;
  const match = /^([UL])([+-]\d+)$/.exec(value);
  if (!match) return undefined;
  const delta = Number(match[2]);
  if (match[1] === 'U') return realNlink + delta;
  return lowerNlink === undefined ? undefined : lowerNlink + delta;
}

function realNlink(ufs: UnionFs, real: string): number | undefined {
  return sys.lstatRaw(real, ufs.statBuf) === 0 ? (ufs.statBuf[StatIndex.nlink] ?? 1) : undefined;
}

/** Writes the union link count of the inode at `real` relative to its current st_nlink ("U%+i"). */
export function storeUnionNlink(ufs: UnionFs, real: string, unionNlink: number): void {
  const nlink = realNlink(ufs, real);
  if (nlink === undefined) return;
  const delta = unionNlink - nlink;
  ufs.realfs.setxattr(real, ufs.xattrs.nlink, Buffer.from(`U${delta >= 0 ? '+' : ''}${delta}`));
}

/** The union link count stored on the inode at `real`, or undefined if it carries none. */
export function unionNlinkAt(ufs: UnionFs, real: string): number | undefined {
  const nlink = realNlink(ufs, real);
  return nlink === undefined ? undefined : storedUnionNlink(ufs, real, nlink);
}

/** The union link count of an indexed inode as the kernel would report it, or undefined if not indexed. */
export function unionNlinkOf(ufs: UnionFs, entry: UnionEntry): number | undefined {
  return unionNlinkAt(ufs, entry.indexReal ?? entry.top.real);
}

/** The index entry sharing the inode of `entry`, when it is an indexed hard link. */
export function indexEntryOf(ufs: UnionFs, entry: UnionEntry): string | undefined {
  if (entry.indexReal !== undefined) return entry.indexReal;
  if (!entry.inUpper || !ufs.indexDir) return undefined;
  const fb = sys.lgetxattr(entry.top.real, ufs.xattrs.origin);
  if (fb === null) return undefined;
  const candidate = `${ufs.indexDir}/${fb.toString('hex')}`;
  if (sys.lstatRaw(entry.top.real, ufs.statBuf) < 0) return undefined;
  const ino = ufs.statBuf[StatIndex.ino];
  if (sys.lstatRaw(candidate, ufs.statBuf) < 0 || ufs.statBuf[StatIndex.ino] !== ino) return undefined;
  return candidate;
}

/**
 * Records that the indexed inode behind `indexEntry` gained or lost a name in the union. When its last
 * name is gone, the index entry goes too (nothing can reach the data any more).
 */
export function adjustUnionNlink(ufs: UnionFs, indexEntry: string, unionNlinkBefore: number, change: number): void {
  const after = unionNlinkBefore + change;
  if (after <= 0 && realNlink(ufs, indexEntry) === 1) {
    ufs.realfs.unlink(indexEntry);
  } else {
    storeUnionNlink(ufs, indexEntry, Math.max(after, 0));
  }
  ufs.invalidateHardLinkAliases();
}
