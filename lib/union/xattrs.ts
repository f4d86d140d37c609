/**
 * Extended attributes: the kernel's private trusted.overlay.* names and the escaping that lets users store
 * their own trusted.overlay.* attributes (as kernel overlayfs does since 6.7: the user's "trusted.overlay.X"
 * is stored as "trusted.overlay.overlay.X" on the real file). The private ones are never shown or changeable.
 */

import { sys } from '../native/index.js';
import { fsError } from '../errors.js';
import { copyUp } from './copy-up.js';
import type { UnionFs } from './super.js';

export const OVL_PREFIX = 'trusted.overlay.';
const OVL_ESCAPED_PREFIX = 'trusted.overlay.overlay.';
export const OVL_OPAQUE = 'trusted.overlay.opaque';
export const OVL_REDIRECT = 'trusted.overlay.redirect';
export const OVL_ORIGIN = 'trusted.overlay.origin';

/** The real name under which a user-visible attribute name is stored. */
export function realXattrName(name: string): string {
  return name.startsWith(OVL_PREFIX) ? OVL_ESCAPED_PREFIX + name.slice(OVL_PREFIX.length) : name;
}

/** The user-visible name of a real attribute, or undefined for the kernel's private ones. */
export function visibleXattrName(realName: string): string | undefined {
  if (realName.startsWith(OVL_ESCAPED_PREFIX)) return OVL_PREFIX + realName.slice(OVL_ESCAPED_PREFIX.length);
  if (realName.startsWith(OVL_PREFIX)) return undefined;
  return realName;
}

/** True for attributes copy-up must carry over (everything but the kernel's private ones). */
export function isCopiedXattr(realName: string): boolean {
  return realName.startsWith(OVL_ESCAPED_PREFIX) || !realName.startsWith(OVL_PREFIX);
}

// --- xattr operations on the merged view -------------------------------------------------------------


const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;

function checkXattrName(name: string): void {
  if (name.length === 0) throw fsError('EINVAL', 'empty xattr name');
  if (Buffer.byteLength(name) > XATTR_NAME_MAX) throw fsError('ERANGE', name);
}

export function getXattr(ufs: UnionFs, path: string, name: string): Buffer {
  checkXattrName(name);
  const value = sys.lgetxattr(ufs.dataReal(ufs.lookup(path)), realXattrName(name));
  if (value === null) throw fsError('ENODATA', name);
  return value;
}

export function listXattrs(ufs: UnionFs, path: string): string[] {
  const names: string[] = [];
  for (const realName of sys.llistxattr(ufs.dataReal(ufs.lookup(path)))) {
    const visible = visibleXattrName(realName);
    if (visible !== undefined) names.push(visible);
  }
  return names;
}

export async function setXattr(ufs: UnionFs, path: string, name: string, value: Buffer, flags: number): Promise<void> {
  checkXattrName(name);
  if (value.length > XATTR_SIZE_MAX) throw fsError('E2BIG', name);
  ufs.assertWritable(path);
  const entry = await copyUp(ufs, ufs.lookup(path));
  ufs.realfs.setxattr(entry.top.real, realXattrName(name), value, flags);
}

export async function removeXattr(ufs: UnionFs, path: string, name: string): Promise<void> {
  checkXattrName(name);
  ufs.assertWritable(path);
  let entry = ufs.lookup(path);
  const realName = realXattrName(name);
  // Removing an attribute the object does not have must not copy it up (the kernel answers ENODATA).
  if (!entry.inUpper && sys.lgetxattr(ufs.dataReal(entry), realName) === null) throw fsError('ENODATA', name);
  entry = await copyUp(ufs, entry);
  ufs.realfs.removexattr(entry.top.real, realName);
}
