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
import type { OverlayXattrs } from './xattrs.js';
import { joinRel } from './util.js';

export interface LookupContext {
  readonly layers: readonly Layer[];
  /** The inode number a copied-up object with origin `fb` reports, or undefined to use its own (see UnionFs). */
  originIno?(upperReal: string, fb: Buffer, isDir: boolean): number | undefined;
  /** Finds the index entry of a lower hard link, when the hard link index is in use. */
  findIndexEntry?(lower: LayerPath): string | undefined;
  readonly samefs: boolean;
  /** The names of the private xattrs (trusted.overlay.* or, with userxattr, user.overlay.*). */
  readonly xattrs: OverlayXattrs;
  /** False for redirect_dir=nofollow: a redirect found on the way down is refused instead of followed. */
  readonly followRedirects?: boolean;
  /** Scratch buffer for lstat results; lookups are synchronous so one buffer is enough. */
  readonly statBuf: Float64Array;
  /**
   * Where lookupChild leaves the lstat of the object it found (`real` names it), so that a getattr that
   * had to look the name up answers from it instead of a second lstat. Only getattr reads it, and only
   * for a lookup made inside that same synchronous call (it clears `real` first): never a stale stat.
   */
  readonly foundStat?: { real: string | undefined; readonly stat: Float64Array };
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
  const fb = ctx.originIno ? sys.lgetxattr(upper.real, ctx.xattrs.origin) : null;
  const ino = fb === null ? undefined : ctx.originIno?.(upper.real, fb, isDir);
  return ino ?? layerIno(ctx, upper.layer, realIno);
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
 * The state of one name's search down the layers (struct ovl_lookup_data). `name` is what the next layer
 * is searched for: a bare name (looked up in the parent's dir of that layer) or, after an absolute
 * redirect, a path from the layer root. Redirects met in any layer rewrite it for the layers below.
 */
interface LookupData {
  name: string;
  /** Nothing below the current layer takes part (whiteout, non-dir, opaque dir). */
  stop: boolean;
  /** A directory was found for the name, so non-dirs below it are hidden. */
  isDir: boolean;
  /** Of the last element found in the current layer: its opaque flag and its redirect xattr as stored. */
  opaque: boolean;
  rawRedirect?: string;
}

/**
 * One path element in one layer (ovl_lookup_single). `prelen` and `post` place the element in d.name
 * (both empty for a bare name); a redirect found here replaces the element (relative) or everything up to
 * it (absolute), keeping `post`, exactly as the kernel rewrites its lookup name.
 */
function lookupSingle(ctx: LookupContext, layer: Layer, baseRel: string, element: string, prelen: number, post: string, d: LookupData): LayerPath | undefined {
  const stat = ctx.statBuf;
  const lastElement = post.length === 0;
  const candidate = layerPath(layer, joinRel(baseRel, element));
  if (sys.lstatRaw(candidate.real, stat) < 0) return undefined; // ENOENT, or ENOTDIR below a non-dir
  if (isWhiteoutStat(stat)) {
    d.stop = true;
    return undefined;
  }
  if (((stat[StatIndex.mode] ?? 0) & S_IFMT) !== S_IFDIR) {
    d.stop = true;
    // A non-dir below a dir is hidden by it; a non-dir in the middle of a path ends the search.
    return d.isDir || !lastElement ? undefined : candidate;
  }
  if (lastElement) d.isDir = true;
  // Nothing is below the bottom layer, so its xattrs are never read (they cannot steer anything).
  const bottom = ctx.layers[ctx.layers.length - 1];
  if (!layer.isUpper && layer === bottom) return candidate;
  if (readXattrString(candidate.real, ctx.xattrs.opaque) === 'y') {
    d.stop = true;
    if (lastElement) d.opaque = true;
    return candidate;
  }
  const target = readXattrString(candidate.real, ctx.xattrs.redirect);
  if (lastElement) d.rawRedirect = target;
  if (target !== undefined && validRedirect(target)) {
    if (target.startsWith('/')) {
      // An absolute redirect below an opaque ancestor still continues the search (as the kernel does).
      d.stop = false;
      d.name = path.posix.normalize(target) + post;
    } else {
      d.name = d.name.slice(0, prelen) + target + post;
    }
  }
  return candidate;
}

/** The kernel ignores (with a warning) an empty redirect, an absolute one with empty elements, and a relative one with a '/'. */
function validRedirect(target: string): boolean {
  if (target.length === 0) return false;
  if (target.startsWith('/')) return !target.slice(1).split('/').some((e) => e.length === 0);
  return !target.includes('/');
}

/** Searches one layer for d.name (ovl_lookup_layer): a bare name in `base`, or a path from the layer root. */
function lookupLayer(ctx: LookupContext, layer: Layer, base: LayerPath | undefined, d: LookupData): LayerPath | undefined {
  d.opaque = false;
  d.rawRedirect = undefined;
  if (!d.name.startsWith('/')) return base === undefined ? undefined : lookupSingle(ctx, layer, base.rel, d.name, 0, '', d);
  const elements = d.name.slice(1).split('/');
  let baseRel = '/';
  let post = d.name.slice(1 + (elements[0]?.length ?? 0));
  let found: LayerPath | undefined;
  for (const [i, element] of elements.entries()) {
    // d.name may have been rewritten by a redirect above, but it always still ends with "/element" + post.
    const prelen = d.name.length - post.length - element.length;
    found = lookupSingle(ctx, layer, baseRel, element, prelen, post, d);
    if (found === undefined || i === elements.length - 1) break;
    baseRel = found.rel;
    post = post.slice(1 + (elements[i + 1]?.length ?? 0));
  }
  return found;
}

/**
 * Looks `name` up in the directory `parent`. Returns undefined when the name does not exist in the merged
 * view (absent everywhere, or hidden by a whiteout). Mirrors ovl_lookup(): every layer is searched for the
 * current lookup name, in the parent's dir of that layer while the name is bare, and from each layer's root
 * once a redirect made it absolute; redirects found in lower layers (an old upper reused as a lower) are
 * followed like those of the upper layer, to the bottom.
 */
export function lookupChild(ctx: LookupContext, parent: UnionEntry, name: string): UnionEntry | undefined {
  if (parent.type !== S_IFDIR) throw fsError('ENOTDIR', parent.path);
  const childPath = joinRel(parent.path, name);
  const parentDirs = new Map<number, LayerPath>();
  parentDirs.set(parent.top.layer.index, parent.top);
  for (const dir of parent.lowers) parentDirs.set(dir.layer.index, dir);
  const stat = ctx.statBuf;

  let found: LayerPath | undefined;
  let foundType = 0;
  let foundIno = 0;
  let foundNlink = 1;
  let opaque = false;
  let redirect: string | undefined;
  const lowers: LayerPath[] = [];
  const d: LookupData = { name, stop: false, isDir: false, opaque: false };

  for (const layer of ctx.layers) {
    if (layer.index < parent.top.layer.index) continue;
    const base = d.name.startsWith('/') ? layerPath(layer, '/') : parentDirs.get(layer.index);
    if (base === undefined) continue;
    if (ctx.followRedirects === false && d.name !== name) {
      // redirect_dir=nofollow: the kernel refuses to follow (EPERM) rather than show a partial merge.
      throw fsError('EPERM', `${childPath}: not following a redirect (redirect_dir=nofollow)`);
    }
    const candidate = lookupLayer(ctx, layer, base, d);
    if (candidate !== undefined) {
      if (found === undefined) {
        // stat still holds the candidate's attributes: it was the last thing lstat'ed.
        found = candidate;
        foundType = (stat[StatIndex.mode] ?? 0) & S_IFMT;
        foundIno = stat[StatIndex.ino] ?? 0;
        foundNlink = stat[StatIndex.nlink] ?? 1;
        if (ctx.foundStat !== undefined) {
          ctx.foundStat.stat.set(stat);
          ctx.foundStat.real = candidate.real;
        }
        if (layer.isUpper && foundType === S_IFDIR) {
          opaque = d.opaque;
          redirect = d.rawRedirect;
        }
      } else {
        lowers.push(candidate);
      }
    }
    if (d.stop) break;
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
