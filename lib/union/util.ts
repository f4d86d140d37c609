/**
 * Helpers and constants the union's files share, as fs/overlayfs keeps them in util.c: union paths (absolute,
 * '/'-separated, no trailing slash, '/' for the root), the on-disk format's fixed names, and the read-side calls
 * on real paths of any length.
 */
import fs from 'node:fs';
import { sys } from '../native/index.js';

/**
 * PATH_MAX (the terminating NUL included): the kernel refuses a path of this many bytes or more in one call.
 * A real path is a layer root plus a merged path, and a merged path has no limit (a process cd'd deep inside the
 * mount creates ever deeper entries, each call short relative to its cwd). So every call on a real path goes
 * either through Node's fs (plain path, the fast path) or, for a long path, through the addon, which walks it
 * in openat hops and makes the *at call relative to the deepest dir (lib/native/index.ts). The addon's own
 * path calls (lstatRaw, the xattr calls, readdirIno...) take any length themselves.
 */
export const PATH_MAX = 4096;

/** True when `p` needs the addon's hop-by-hop walk. UTF-8 takes at most 3 bytes per UTF-16 unit, so nearly every path is decided without counting bytes. */
export function isLongPath(p: string): boolean {
  return p.length * 3 >= PATH_MAX && Buffer.byteLength(p) >= PATH_MAX;
}

/** open(2) of a real path of any length (reads and data fds; creation goes through RealFs.openCreate). */
export function openReal(p: string, flags: number, mode = 0o666): number {
  return isLongPath(p) ? sys.open(p, flags, mode) : fs.openSync(p, flags, mode);
}

/** readlink(2) of a real path of any length. */
export function readlinkReal(p: string): string {
  return isLongPath(p) ? sys.readlink(p) : fs.readlinkSync(p);
}

/** open(2)'s O_PATH, which Node's fs.constants lacks: an fd that names an object without opening it for I/O. */
export const O_PATH = 0o10000000;

/** The prefix of kernel overlayfs's private xattrs (user.overlay. with `userxattr`, see xattrs.ts). */
export const OVL_XATTR_PREFIX = 'trusted.overlay.';
/** An upper dir with `trusted.overlay.opaque=y` hides everything below it (the layer-tar form is `.wh..wh..opq`). */
export const OVL_OPAQUE_XATTR = `${OVL_XATTR_PREFIX}opaque`;

/** A union path's parent and last component; the root's parent is the root. */
export function splitPath(p: string): { parent: string; name: string } {
  const i = p.lastIndexOf('/');
  return { parent: i <= 0 ? '/' : p.slice(0, i), name: p.slice(i + 1) };
}

export function parentPath(p: string): string {
  return splitPath(p).parent;
}

/** The union path of `name` inside the directory `parentRel`. */
export function joinRel(parentRel: string, name: string): string {
  return parentRel === '/' ? `/${name}` : `${parentRel}/${name}`;
}
