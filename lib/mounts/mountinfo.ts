/**
 * What the kernel says is mounted, and how to take a mount away. Node has no umount2(2), so detaching goes
 * through util-linux `umount` (plain, then `-l` for a lazy detach) the way an operator would do it by hand.
 *
 * Nothing here may touch a FUSE mount's files: with a hung helper any stat of the mountpoint blocks until the
 * connection is aborted. So the mount table is read from /proc/self/mountinfo, `umount` runs with
 * --no-canonicalize (it would otherwise stat the path first, and hang there) and under a deadline, and a FUSE
 * connection is found by the device number mountinfo lists, never by stat'ing the mount.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { StrataError } from '../errors.js';

const execFileAsync = promisify(execFile);

/** Where the fusectl filesystem lists one dir per FUSE connection, named by the connection's id. */
export const FUSECTL_DIR = '/sys/fs/fuse/connections';

export interface MountEntry {
  mountId: number;
  /** st_dev of the mounted filesystem ("major:minor"); for FUSE the minor is the connection id. */
  device: string;
  /** Per-mount options (rw, nosuid, nodev, ...). */
  mountOptions: string[];
  mountPoint: string;
  fsType: string;
  source: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const separator = fields.indexOf('-');
    if (separator < 0 || fields.length < separator + 3) continue;
    entries.push({
      mountId: Number(fields[0]),
      device: fields[2] ?? '',
      mountOptions: (fields[5] ?? '').split(','),
      mountPoint: unescapeMountField(fields[4] ?? ''),
      fsType: fields[separator + 1] ?? '',
      source: unescapeMountField(fields[separator + 2] ?? ''),
    });
  }
  return entries;
}

export async function readMountTable(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** readMountTable() for callers that cannot wait (the FUSE transport's mount checks, test clean-up). */
export function readMountTableSync(): MountEntry[] {
  return parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** The topmost mount at exactly `mountPoint`, if any. */
export async function mountAt(mountPoint: string): Promise<MountEntry | undefined> {
  const table = await readMountTable();
  return table.filter((e) => e.mountPoint === mountPoint).at(-1);
}

export type DetachOutcome = 'unmounted' | 'lazily-detached' | 'aborted-and-detached' | 'not-mounted';

export interface DetachOptions {
  /** Detach a busy mount lazily (MNT_DETACH) instead of failing with STRATA_MOUNT_BUSY. */
  lazyIfBusy: boolean;
  /** How long each `umount` may take. */
  timeoutMs: number;
}

async function runUmount(args: string[], timeoutMs: number): Promise<void> {
  await execFileAsync('umount', ['--no-canonicalize', ...args], { timeout: timeoutMs, killSignal: 'SIGKILL' });
}

function timedOut(err: unknown): boolean {
  const e = err as { killed?: boolean; signal?: string | null };
  return e.killed === true || e.signal === 'SIGKILL';
}

/**
 * Unmounts `mountPoint`. A busy mount fails with STRATA_MOUNT_BUSY unless `lazyIfBusy`, in which case it is
 * detached lazily (MNT_DETACH): gone from the namespace at once, released by the kernel when its last user leaves.
 * A dead FUSE mount ("Transport endpoint is not connected") cannot be unmounted normally either; it is detached lazily.
 * An `umount` that does not finish in time fails with STRATA_MOUNT_FAILED (see forceDetach for the way out).
 */
export async function detachMount(mountPoint: string, options: DetachOptions): Promise<DetachOutcome> {
  if ((await mountAt(mountPoint)) === undefined) return 'not-mounted';
  try {
    await runUmount([mountPoint], options.timeoutMs);
    return 'unmounted';
  } catch (err) {
    if (timedOut(err)) {
      throw new StrataError('STRATA_MOUNT_FAILED', `umount ${mountPoint} did not finish within ${options.timeoutMs} ms; if its helper is hung, use --force to abort its FUSE connection`, { cause: err });
    }
    const stderr = String((err as { stderr?: string }).stderr ?? '');
    const busy = /busy/i.test(stderr);
    const dead = /not connected/i.test(stderr);
    if (busy && !options.lazyIfBusy) {
      throw new StrataError('STRATA_MOUNT_BUSY', `${mountPoint} is busy: close the files and shells using it (see \`fuser -vm ${mountPoint}\`) or pass --force to detach it lazily`, { cause: err });
    }
    if (!busy && !dead && (await mountAt(mountPoint)) === undefined) return 'unmounted';
    try {
      await runUmount(['-l', mountPoint], options.timeoutMs);
      return 'lazily-detached';
    } catch (lazyErr) {
      throw new StrataError('STRATA_MOUNT_FAILED', `cannot unmount ${mountPoint}: ${stderr.trim() || String(err)}`, { cause: lazyErr });
    }
  }
}

/** The FUSE connection id of a mount table entry: the minor of its device number. */
export function fuseConnectionId(entry: MountEntry): number | undefined {
  if (!entry.fsType.startsWith('fuse')) return undefined;
  const minor = Number(entry.device.split(':')[1]);
  return Number.isInteger(minor) ? minor : undefined;
}

/** Mounts fusectl at its usual place when it is not mounted yet (it is what lets a hung connection be aborted). */
async function ensureFusectl(timeoutMs: number): Promise<void> {
  if ((await readMountTable()).some((e) => e.fsType === 'fusectl')) return;
  try {
    await execFileAsync('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR], { timeout: timeoutMs, killSignal: 'SIGKILL' });
  } catch (err) {
    // Another process may have mounted it meanwhile.
    if (!(await readMountTable()).some((e) => e.fsType === 'fusectl')) {
      throw new StrataError('STRATA_MOUNT_FAILED', `cannot mount fusectl on ${FUSECTL_DIR} to abort a FUSE connection: ${String((err as { stderr?: string }).stderr ?? err).trim()}`, { cause: err });
    }
  }
}

/**
 * Aborts the FUSE connection behind the mount at `mountPoint` (fusectl's `abort`): every request waiting on the
 * helper fails at once with ECONNABORTED, and so does every later one. Returns false when no FUSE mount is there.
 */
export async function abortFuseConnection(mountPoint: string, timeoutMs: number): Promise<boolean> {
  const entry = await mountAt(mountPoint);
  const id = entry === undefined ? undefined : fuseConnectionId(entry);
  if (id === undefined) return false;
  await ensureFusectl(timeoutMs);
  try {
    await writeFile(`${FUSECTL_DIR}/${id}/abort`, '1');
  } catch (err) {
    // The connection ended by itself meanwhile (its dir is gone): nothing left to abort.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new StrataError('STRATA_MOUNT_FAILED', `cannot abort FUSE connection ${id} of ${mountPoint}: ${(err as Error).message}`, { cause: err });
  }
  return true;
}

/**
 * The way out for a hung or busy mount: the FUSE connection is aborted first (so that nothing waits on the helper
 * any more), then the mount is detached lazily. Bounded by `timeoutMs` per step.
 */
export async function forceDetach(mountPoint: string, timeoutMs: number): Promise<DetachOutcome> {
  if ((await mountAt(mountPoint)) === undefined) return 'not-mounted';
  const aborted = await abortFuseConnection(mountPoint, timeoutMs);
  if ((await mountAt(mountPoint)) === undefined) return aborted ? 'aborted-and-detached' : 'unmounted';
  try {
    await runUmount(['-l', mountPoint], timeoutMs);
  } catch (err) {
    if ((await mountAt(mountPoint)) !== undefined) {
      throw new StrataError('STRATA_MOUNT_FAILED', `cannot detach ${mountPoint}: ${String((err as { stderr?: string }).stderr ?? err).trim()}`, { cause: err });
    }
  }
  return aborted ? 'aborted-and-detached' : 'lazily-detached';
}
