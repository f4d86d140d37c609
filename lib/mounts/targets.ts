/**
 * Where the daemon agrees to mount. A mount hides whatever is below its target from every process on the host, and
 * the daemon runs as root on behalf of anyone who can reach its socket, so a target is checked before anything is
 * made, and again before every (re)mount, because the path may have changed while the daemon was stopped:
 *
 *  - the target is resolved to its real path (symlinks in its parents are followed), and the mount is made and
 *    recorded there: the helper mounts the real path, and the service looks for its mount at the same path;
 *  - the last component must not be a symlink: a link can be re-pointed between the check and the mount;
 *  - it must be an existing directory whose path overlay options can carry;
 *  - it must not be a system path (SYSTEM_TREES and everything below them, SYSTEM_DIRS exactly);
 *  - it must not be inside the state dir, nor contain the state dir or the control socket (hiding them);
 *  - when `allowedTargets` is set, it must be one of those dirs or below one of them.
 *
 * Every file-system call here runs against a deadline: a path through a hung FUSE mount must give a clear error,
 * not hold the request (the stuck call keeps one libuv pool thread until the mount is aborted).
 */
import { lstat, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { StrataError } from '../errors.js';

/** Trees where no mount may be made, at the root nor anywhere below. */
export const SYSTEM_TREES: readonly string[] = [
  '/proc', '/sys', '/dev', '/etc', '/usr', '/boot', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32',
  '/run/strata', '/var/lib/strata',
];
/** Dirs that may hold mounts below them but must not be covered themselves. */
export const SYSTEM_DIRS: readonly string[] = [
  '/', '/run', '/var', '/var/lib', '/var/log', '/var/cache', '/var/tmp', '/tmp', '/home', '/root', '/opt', '/srv', '/mnt', '/media',
];

export interface TargetPolicy {
  /** The daemon's state dir. */
  stateDir: string;
  /** The control socket: a mount over a dir above it would hide it from every client. */
  socket?: string;
  /** Allow-list of dirs (each with everything below it); empty allows any target the other rules allow. */
  allowedTargets: readonly string[];
  /** Deadline for each file-system call. */
  timeoutMs: number;
}

/** overlayfs option syntax reserves these characters in a path. */
const UNSAFE_PATH_CHARS = /[,:\n]/;

function isSameOrInside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith('/') ? parent : `${parent}/`);
}

function refuse(message: string): StrataError {
  return new StrataError('STRATA_BAD_DIR', message);
}

/** Runs one file-system call with a deadline. */
async function bounded<T>(what: string, call: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new StrataError('STRATA_BAD_DIR', `${what} did not answer within ${timeoutMs} ms (is a FUSE mount on that path hung?)`)), timeoutMs);
  });
  try {
    return await Promise.race([call, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Real path of a protected dir, or the path as given when it does not exist (yet). */
async function realOrGiven(dir: string, timeoutMs: number): Promise<string> {
  try {
    return await bounded(`realpath of ${dir}`, realpath(dir), timeoutMs);
  } catch {
    return path.resolve(dir);
  }
}

/**
 * Checks `target` against the policy and returns its real path. Throws STRATA_BAD_DIR naming the rule it broke.
 */
export async function resolveTarget(target: string, policy: TargetPolicy): Promise<string> {
  if (typeof target !== 'string' || target === '') throw new StrataError('STRATA_BAD_REQUEST', 'a mount needs a target directory');
  if (!path.isAbsolute(target)) throw refuse(`target "${target}" must be an absolute path`);
  const given = path.resolve(target);
  const ms = policy.timeoutMs;

  let link;
  try {
    link = await bounded(`target ${given}`, lstat(given), ms);
  } catch (err) {
    if (err instanceof StrataError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw refuse(`target "${target}" does not exist (create it with mkdir -p)`);
    throw refuse(`target "${target}" cannot be checked: ${code ?? String(err)}`);
  }
  if (link.isSymbolicLink()) {
    throw refuse(`target "${target}" is a symlink; give the real directory it points to (symlinks can be re-pointed after the check)`);
  }
  let real: string;
  try {
    real = await bounded(`target ${given}`, realpath(given), ms);
    const info = await bounded(`target ${real}`, stat(real), ms);
    if (!info.isDirectory()) throw refuse(`target "${target}" is not a directory`);
  } catch (err) {
    if (err instanceof StrataError) throw err;
    throw refuse(`target "${target}" cannot be resolved: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const shown = real === given ? `"${target}"` : `"${target}" (really ${real})`;
  if (UNSAFE_PATH_CHARS.test(real)) throw refuse(`target ${shown} contains ',' ':' or a newline, which overlay mount options cannot carry; rename it`);

  for (const tree of SYSTEM_TREES) {
    if (isSameOrInside(real, tree)) throw refuse(`target ${shown} is a system path (${tree} and everything below it are refused); choose a directory of your own, e.g. under /mnt or /srv`);
  }
  if (SYSTEM_DIRS.includes(real)) throw refuse(`target ${shown} is a system directory; mounting over it would hide it from the whole host; choose a directory below it`);

  const stateDir = await realOrGiven(policy.stateDir, ms);
  if (isSameOrInside(real, stateDir)) throw refuse(`target ${shown} is inside the state dir ${stateDir}; choose a directory outside it`);
  if (isSameOrInside(stateDir, real)) throw refuse(`target ${shown} contains the state dir ${stateDir}; a mount there would hide it`);
  if (policy.socket !== undefined) {
    const socketDir = await realOrGiven(path.dirname(policy.socket), ms);
    if (isSameOrInside(socketDir, real)) throw refuse(`target ${shown} contains the control socket ${policy.socket}; a mount there would hide it`);
  }

  if (policy.allowedTargets.length > 0) {
    const allowed = await Promise.all(policy.allowedTargets.map((dir) => realOrGiven(dir, ms)));
    if (!allowed.some((dir) => isSameOrInside(real, dir))) {
      throw refuse(`target ${shown} is outside the allowed targets (${policy.allowedTargets.join(', ')}); see allowedTargets in the daemon config`);
    }
  }
  return real;
}
