/**
 * Reading a layer in the kernel overlay format (an upper dir, or a stored layer dir) without mounting it:
 * what a name is (whiteout, opaque dir, redirected dir, plain entry), and, for the few rules that need it, the
 * merged view of the lower layers below (lookup stops at a whiteout, a non-directory or an opaque dir, and follows
 * a redirect into the layers below, as ovl_lookup does).
 *
 * Invariant for callers: only the dirs an upper entry names are ever looked up in the lowers, so the cost of
 * walking an upper grows with the upper, not with the image under it.
 */
import { lstatSync, readdirSync, type BigIntStats } from 'node:fs';
import path from 'node:path';
import { sys } from '../native/index.js';
import { OVL_OPAQUE_XATTR, OVL_XATTR_PREFIX } from '../union/util.js';

/** Layers are stored in the kernel's trusted.overlay.* format (never userxattr), so the names are fixed here. */
const OVL_ESCAPED_PREFIX = `${OVL_XATTR_PREFIX}overlay.`;
const OVL_REDIRECT = `${OVL_XATTR_PREFIX}redirect`;

export function lstatOrNull(file: string): BigIntStats | null {
  return lstatSync(file, { bigint: true, throwIfNoEntry: false }) ?? null;
}

/** A whiteout: a character device 0/0. */
export function isWhiteout(st: BigIntStats): boolean {
  return st.isCharacterDevice() && st.rdev === 0n;
}

export function isOpaque(dir: string): boolean {
  return sys.lgetxattr(dir, OVL_OPAQUE_XATTR)?.toString() === 'y';
}

export function redirectOf(dir: string): string | null {
  const value = sys.lgetxattr(dir, OVL_REDIRECT);
  return value === null ? null : value.toString();
}

/**
 * A file's attributes as a user of the merged view sees them: the kernel's private trusted.overlay.* ones are
 * dropped, and a user's own escaped trusted.overlay.overlay.X comes back as trusted.overlay.X.
 */
export function userXattrs(file: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of sys.llistxattr(file)) {
    let visible: string;
    if (name.startsWith(OVL_ESCAPED_PREFIX)) visible = OVL_XATTR_PREFIX + name.slice(OVL_ESCAPED_PREFIX.length);
    else if (name.startsWith(OVL_XATTR_PREFIX)) continue;
    else visible = name;
    const value = sys.lgetxattr(file, name);
    if (value !== null) out.set(visible, value);
  }
  return out;
}

/** Names of a dir in byte order (tar entries and diff lines come out sorted). */
export function sortedNames(dir: string): string[] {
  return readdirSync(dir).sort(byteOrder);
}

export function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** One lower layer's real dir contributing to a merged lower dir. */
interface LowerDir {
  layer: number;
  real: string;
}

/** The merged view of a stack of lower layers (top first), looked up lazily and memoised per path. */
export class LowerView {
  private readonly stacks = new Map<string, LowerDir[] | null>();
  /** Lower real paths looked at (for the O(change) check). */
  lookups = 0;

  constructor(private readonly lowerDirs: readonly string[]) {}

  /** The dirs making up merged lower dir `rel` ('' is the root), or null if `rel` is not a directory there. */
  dirStack(rel: string): LowerDir[] | null {
    const cached = this.stacks.get(rel);
    if (cached !== undefined) return cached;
    let result: LowerDir[] | null;
    if (rel === '') {
      result = this.lowerDirs.map((real, layer) => ({ layer, real }));
    } else {
      const parent = this.dirStack(path.posix.dirname(rel) === '.' ? '' : path.posix.dirname(rel));
      result = parent === null ? null : this.lookupDir(parent, path.posix.basename(rel));
    }
    this.stacks.set(rel, result);
    return result;
  }

  /** The top real entry of merged lower name `rel`, or null when no lower layer shows one. */
  entry(rel: string): { real: string; st: BigIntStats } | null {
    const parentRel = path.posix.dirname(rel) === '.' ? '' : path.posix.dirname(rel);
    const parent = this.dirStack(parentRel);
    if (parent === null) return null;
    const name = path.posix.basename(rel);
    for (const d of parent) {
      const real = path.join(d.real, name);
      this.lookups += 1;
      const st = lstatOrNull(real);
      if (st === null) continue;
      return isWhiteout(st) ? null : { real, st };
    }
    return null;
  }

  /** Names visible in merged lower dir `rel`, each with its top real path. */
  list(rel: string): Map<string, string> {
    const out = new Map<string, string>();
    const hidden = new Set<string>();
    for (const d of this.dirStack(rel) ?? []) {
      for (const name of sortedNames(d.real)) {
        if (out.has(name) || hidden.has(name)) continue;
        const real = path.join(d.real, name);
        const st = lstatOrNull(real);
        if (st === null) continue;
        if (isWhiteout(st)) hidden.add(name);
        else out.set(name, real);
      }
    }
    return out;
  }

  private lookupDir(parent: LowerDir[], name: string): LowerDir[] | null {
    const out: LowerDir[] = [];
    // After a redirect, the layers below are searched at the redirect's path from their roots.
    let redirected: string | null = null;
    let lastLayer = -1;
    const candidates = (): LowerDir[] => redirected === null
      ? parent.filter((d) => d.layer > lastLayer).map((d) => ({ layer: d.layer, real: path.join(d.real, name) }))
      : this.lowerDirs.map((root, layer) => ({ layer, real: path.join(root, redirected!) })).filter((d) => d.layer > lastLayer);
    let queue = candidates();
    while (queue.length > 0) {
      const d = queue.shift()!;
      lastLayer = d.layer;
      this.lookups += 1;
      const st = lstatOrNull(d.real);
      if (st === null) continue;
      if (isWhiteout(st)) break;
      if (!st.isDirectory()) {
        if (out.length === 0) return null;
        break;
      }
      out.push(d);
      if (isOpaque(d.real)) break;
      const redirect = redirectOf(d.real);
      if (redirect !== null) {
        const base = path.relative(this.lowerDirs[d.layer]!, path.dirname(d.real));
        redirected = redirect.startsWith('/') ? redirect.slice(1) : path.posix.join(base, redirect);
        queue = candidates();
      }
    }
    return out.length === 0 ? null : out;
  }
}

/** Where a redirected dir's lower content lives, as a merged lower path. */
export function redirectOrigin(redirect: string, parentLowerRel: string): string {
  return redirect.startsWith('/') ? redirect.slice(1) : path.posix.join(parentLowerRel, redirect);
}
