/**
 * Extended attributes: the kernel's private trusted.overlay.* (or, with userxattr, user.overlay.*) names and the escaping that lets users store
 * their own trusted.overlay.* attributes (as kernel overlayfs does since 6.7: the user's "trusted.overlay.X"
 * is stored as "trusted.overlay.overlay.X" on the real file). The private ones are never shown or changeable.
 */

import fs from 'node:fs';
import { sys, StatIndex } from '../native/index.js';
import { fsError } from '../errors.js';
import { copyUp } from './copy-up.js';
import type { Caller, UnionFs } from './super.js';
import { OVL_XATTR_PREFIX } from './util.js';

/**
 * The names of the overlay's private xattrs: trusted.overlay.* normally, user.overlay.* with `userxattr`
 * (as the kernel does for unprivileged mounts). One instance per mount, on UnionFs.xattrs.
 */
export interface OverlayXattrs {
  readonly prefix: string;
  /** Where a user's own attribute named <prefix>X is stored: <prefix>overlay.X. */
  readonly escapedPrefix: string;
  readonly opaque: string;
  readonly redirect: string;
  readonly origin: string;
  readonly nlink: string;
}

export function overlayXattrs(userxattr: boolean): OverlayXattrs {
  const prefix = userxattr ? 'user.overlay.' : OVL_XATTR_PREFIX;
  return { prefix, escapedPrefix: `${prefix}overlay.`, opaque: `${prefix}opaque`, redirect: `${prefix}redirect`, origin: `${prefix}origin`, nlink: `${prefix}nlink` };
}

/** The default (trusted.*) names, for code that reads or writes kernel-format layers outside a mount. */
export const TRUSTED_XATTRS = overlayXattrs(false);

/** The real name under which a user-visible attribute name is stored. */
export function realXattrName(x: OverlayXattrs, name: string): string {
  return name.startsWith(x.prefix) ? x.escapedPrefix + name.slice(x.prefix.length) : name;
}

/** The user-visible name of a real attribute, or undefined for the overlay's private ones. */
export function visibleXattrName(x: OverlayXattrs, realName: string): string | undefined {
  if (realName.startsWith(x.escapedPrefix)) return x.prefix + realName.slice(x.escapedPrefix.length);
  if (realName.startsWith(x.prefix)) return undefined;
  return realName;
}

/** True for attributes copy-up must carry over (everything but the overlay's private ones). */
export function isCopiedXattr(x: OverlayXattrs, realName: string): boolean {
  return realName.startsWith(x.escapedPrefix) || !realName.startsWith(x.prefix);
}

// --- xattr operations on the merged view -------------------------------------------------------------


const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;

function checkXattrName(name: string): void {
  if (name.length === 0) throw fsError('EINVAL', 'empty xattr name');
  if (Buffer.byteLength(name) > XATTR_NAME_MAX) throw fsError('ERANGE', name);
}

export function getXattr(ufs: UnionFs, path: string, name: string): Buffer {
  const value = getXattrIfExists(ufs, path, name);
  if (value === null) throw fsError('ENODATA', name);
  return value;
}

/**
 * As getXattr, but null for an attribute that is not set. The kernel asks for security.capability before
 * every write and chown it sends, and the answer is nearly always "not set": no error object for that.
 */
export function getXattrIfExists(ufs: UnionFs, path: string, name: string): Buffer | null {
  checkXattrName(name);
  return sys.lgetxattr(ufs.dataReal(ufs.lookup(path)), realXattrName(ufs.xattrs, name));
}

export function listXattrs(ufs: UnionFs, path: string): string[] {
  const names: string[] = [];
  for (const realName of sys.llistxattr(ufs.dataReal(ufs.lookup(path)))) {
    const visible = visibleXattrName(ufs.xattrs, realName);
    if (visible !== undefined) names.push(visible);
  }
  return names;
}

const POSIX_ACL_ACCESS = 'system.posix_acl_access';
const S_ISGID = 0o2000;

/** True when `caller` is in group `gid`: its primary group or, read from /proc, a supplementary one. */
function callerInGroup(caller: Caller, gid: number): boolean {
  if (caller.gid === gid) return true;
  if (caller.pid === undefined) return false;
  try {
    const status = fs.readFileSync(`/proc/${caller.pid}/status`, 'utf8');
    const groups = /^Groups:\s*(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/) ?? [];
    return groups.includes(String(gid));
  } catch {
    return false; // the process is gone: treat it as outside the group, as chmod by a non-member would
  }
}

export async function setXattr(ufs: UnionFs, path: string, name: string, value: Buffer, flags: number, caller?: Caller): Promise<void> {
  checkXattrName(name);
  if (value.length > XATTR_SIZE_MAX) throw fsError('E2BIG', name);
  ufs.assertWritable(path);
  const entry = await copyUp(ufs, ufs.lookup(path));
  const real = entry.top.real;
  ufs.realfs.setxattr(real, realXattrName(ufs.xattrs, name), value, flags);
  // Setting an access ACL changes the mode like chmod, and clears setgid when the caller is outside the file's
  // group and not privileged (posix_acl_update_mode). The real call ran as root, which never clears it.
  if (name === POSIX_ACL_ACCESS && caller !== undefined && caller.uid !== 0 && sys.lstatRaw(real, ufs.statBuf) === 0) {
    const mode = ufs.statBuf[StatIndex.mode] ?? 0;
    if ((mode & S_ISGID) !== 0 && !callerInGroup(caller, ufs.statBuf[StatIndex.gid] ?? 0)) ufs.realfs.chmod(real, mode & 0o7777 & ~S_ISGID);
  }
}

export async function removeXattr(ufs: UnionFs, path: string, name: string): Promise<void> {
  checkXattrName(name);
  ufs.assertWritable(path);
  let entry = ufs.lookup(path);
  const realName = realXattrName(ufs.xattrs, name);
  // Removing an attribute the object does not have must not copy it up (the kernel answers ENODATA).
  if (!entry.inUpper && sys.lgetxattr(ufs.dataReal(entry), realName) === null) throw fsError('ENODATA', name);
  entry = await copyUp(ufs, entry);
  ufs.realfs.removexattr(entry.top.real, realName);
}
