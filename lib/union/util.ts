/**
 * Helpers and constants the union's files share, as fs/overlayfs keeps them in util.c: union paths (absolute,
 * '/'-separated, no trailing slash, '/' for the root) and the on-disk format's fixed names.
 */

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
