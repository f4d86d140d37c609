/**
 * Name lookup in the merged view (fs/overlayfs/namei.c). A name is searched top-down through the real
 * directories that make up its parent. The search stops at a whiteout, at a non-directory, and below an
 * opaque directory. A directory's trusted.overlay.redirect sends the search in the layers below it to
 * another path: an absolute redirect ("/a/b") restarts from each lower layer's root, a relative one (a bare
 * name) looks in the same parent under the other name.
 */
import path from 'node:path';
import { sys, StatIndex } from '../native/index.js';
import { fsError } from '../errors.js';
import { S_IFCHR, S_IFDIR, S_IFMT, type Layer, type LayerPath, type UnionEntry } from './layer.js';
import { OVL_OPAQUE, OVL_ORIGIN, OVL_REDIRECT } from './xattrs.js';
import { decodeOrigin, inoFromHandle } from './origin.js';

export interface LookupContext {
  readonly layers: readonly Layer[];
  /**
   * For a copied-up non-directory: may it report its origin's inode number? Only when the origin had a
   * single link or this copy is the indexed one; two separate copies of one lower hard link must not share it.
   */
  originInoIsStable?(upperReal: string, origin: Buffer): boolean;
  /** Finds the index entry of a lower hard link, when the hard link index is in use. */
  findIndexEntry?(lower: LayerPath): string | undefined;
  readonly samefs: boolean;
  /** Scratch buffer for lstat results; lookups are synchronous so one buffer is enough. */
  readonly statBuf: Float64Array;
}

export function joinRel(parentRel: string, name: string): string {
  return parentRel === '/' ? `/${name}` : `${parentRel}/${name}`;
}

export function layerPath(layer: Layer, rel: string): LayerPath {
  return { layer, rel, real: rel === '/' ? layer.root : layer.root + rel };
}

export function isWhiteoutStat(stat: Float64Array): boolean {
  return ((stat[StatIndex.mode] ?? 0) & S_IFMT) === S_IFCHR && stat[StatIndex.rdev] === 0;
}

/** Inode numbers of objects on different filesystems are kept apart by the filesystem's index in the high bits. */
export function layerIno(ctx: LookupContext, layer: Layer, realIno: number): number {
  return ctx.samefs || layer.fsIndex === 0 ? realIno : realIno + layer.fsIndex * 2 ** 44;
}

function readXattrString(real: string, name: string): string | undefined {
  const value = sys.lgetxattr(real, name);
  return value === null ? undefined : value.toString('utf8');
}

/** The inode number of an upper object: its origin's when it was copied up, else its own. */
function upperIno(ctx: LookupContext, upper: LayerPath, realIno: number, isDir: boolean): number {
  const fb = sys.lgetxattr(upper.real, OVL_ORIGIN);
  if (fb !== null && ctx.samefs && (isDir || !ctx.originInoIsStable || ctx.originInoIsStable(upper.real, fb))) {
    const origin = decodeOrigin(fb);
    const ino = origin && inoFromHandle(origin);
    if (ino !== undefined) return ino;
  }
  return layerIno(ctx, upper.layer, realIno);
}

/** The root: every layer's root directory, merged, cut at the first opaque root. */
export function lookupRoot(ctx: LookupContext): UnionEntry {
  const [first, ...rest] = ctx.layers;
  if (!first) throw fsError('EIO', 'no layers');
  const top = layerPath(first, '/');
  if (sys.lstatRaw(top.real, ctx.statBuf) < 0) throw fsError('EIO', `layer root ${top.real} is gone`);
  const realIno = ctx.statBuf[StatIndex.ino] ?? 0;
  const lowers: LayerPath[] = [];
  for (const layer of rest) {
    lowers.push(layerPath(layer, '/'));
  }
  const ino = first.isUpper ? upperIno(ctx, top, realIno, true) : layerIno(ctx, first, realIno);
  return { path: '/', type: S_IFDIR, top, inUpper: first.isUpper, lowers, lowerRel: '/', opaque: false, ino };
}

/**
 * Looks `name` up in the directory `parent`. Returns undefined when the name does not exist in the merged
 * view (absent everywhere, or hidden by a whiteout).
 */
export function lookupChild(ctx: LookupContext, parent: UnionEntry, name: string): UnionEntry | undefined {
  if (parent.type !== S_IFDIR) throw fsError('ENOTDIR', parent.path);
  const childPath = parent.path === '/' ? `/${name}` : `${parent.path}/${name}`;
  const parentDirs = parent.lowers.length === 0 ? [parent.top] : [parent.top, ...parent.lowers];
  const stat = ctx.statBuf;

  let found: LayerPath | undefined;
  let foundType = 0;
  let foundIno = 0;
  let foundNlink = 1;
  let opaque = false;
  let redirect: string | undefined;
  const lowers: LayerPath[] = [];

  // The search walks parentDirs by name until an absolute redirect switches it to lower layer roots.
  let searchName = name;
  let absolute: string | undefined;
  let lastLayerIndex = -1;
  let dirIndex = 0;
  let layerIndex = 0;
  for (;;) {
    let candidate: LayerPath;
    if (absolute === undefined) {
      const dir = parentDirs[dirIndex++];
      if (!dir) break;
      if (dir.layer.index <= lastLayerIndex) continue;
      candidate = layerPath(dir.layer, joinRel(dir.rel, searchName));
    } else {
      const layer = ctx.layers[layerIndex++];
      if (!layer) break;
      if (layer.index <= lastLayerIndex) continue;
      candidate = layerPath(layer, absolute);
    }
    if (sys.lstatRaw(candidate.real, stat) < 0) continue; // ENOENT, or ENOTDIR below a non-dir
    if (isWhiteoutStat(stat)) break;
    const type = (stat[StatIndex.mode] ?? 0) & S_IFMT;
    lastLayerIndex = candidate.layer.index;
    if (found === undefined) {
      found = candidate;
      foundType = type;
      foundIno = stat[StatIndex.ino] ?? 0;
      foundNlink = stat[StatIndex.nlink] ?? 1;
      if (type !== S_IFDIR) break;
    } else {
      if (type !== S_IFDIR) break; // a non-dir below a dir is hidden by it
      lowers.push(candidate);
    }
    // Only a directory gets here. Its own opaque and redirect xattrs steer the search below it, so the
    // bottom layer's are never read (nothing is below it). An upper dir's are kept in the entry regardless.
    const lastLayer = ctx.layers[ctx.layers.length - 1];
    if (!candidate.layer.isUpper && candidate.layer === lastLayer) break;
    if (readXattrString(candidate.real, OVL_OPAQUE) === 'y') {
      if (candidate === found && candidate.layer.isUpper) opaque = true;
      break;
    }
    const target = readXattrString(candidate.real, OVL_REDIRECT);
    if (target !== undefined && target.length > 0) {
      if (candidate === found && candidate.layer.isUpper) redirect = target;
      if (target.startsWith('/')) {
        absolute = path.posix.normalize(target);
        layerIndex = 0;
      } else {
        searchName = target;
      }
    }
  }
  if (found === undefined) return undefined;

  const inUpper = found.layer.isUpper;
  let ino: number;
  if (inUpper) ino = upperIno(ctx, found, foundIno, foundType === S_IFDIR);
  else ino = layerIno(ctx, found.layer, foundIno);
  const lowerRel = inUpper ? lowers[0]?.rel : found.rel;
  const entry: UnionEntry = { path: childPath, type: foundType, top: found, inUpper, lowers, lowerRel, opaque, redirect, ino };
  if (!inUpper && foundType !== S_IFDIR) {
    entry.lowerNlink = foundNlink;
    if (foundNlink > 1 && ctx.findIndexEntry) entry.indexReal = ctx.findIndexEntry(found);
  }
  return entry;
}

/**
 * True when a lower layer still shows `name` inside `parent` (so removing or moving it from the upper
 * layer needs a whiteout). Mirrors ovl_lower_positive().
 */
export function lowerPositive(ctx: LookupContext, parent: UnionEntry, name: string): boolean {
  const dirs = parent.inUpper ? parent.lowers : [parent.top, ...parent.lowers];
  for (const dir of dirs) {
    if (sys.lstatRaw(`${dir.real}/${name}`, ctx.statBuf) < 0) continue;
    return !isWhiteoutStat(ctx.statBuf);
  }
  return false;
}
