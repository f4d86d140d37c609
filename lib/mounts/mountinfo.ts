/**
 * What the kernel says is mounted, and how to take a mount away. Node has no umount2(2), so detaching goes
 * through util-linux `umount` (plain, then `-l` for a lazy detach) the way an operator would do it by hand.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { StrataError } from '../errors.js';

const execFileAsync = promisify(execFile);

export interface MountEntry {
  mountId: number;
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

/** The topmost mount at exactly `mountPoint`, if any. */
export async function mountAt(mountPoint: string): Promise<MountEntry | undefined> {
  const table = await readMountTable();
  return table.filter((e) => e.mountPoint === mountPoint).at(-1);
}

export type DetachOutcome = 'unmounted' | 'lazily-detached' | 'not-mounted';

/**
 * Unmounts `mountPoint`. A busy mount fails with STRATA_MOUNT_BUSY unless `lazyIfBusy`, in which case it is
 * detached lazily (MNT_DETACH): gone from the namespace at once, released by the kernel when its last user leaves.
 * A dead FUSE mount ("Transport endpoint is not connected") cannot be unmounted normally either; it is detached lazily.
 */
export async function detachMount(mountPoint: string, options: { lazyIfBusy: boolean }): Promise<DetachOutcome> {
  if ((await mountAt(mountPoint)) === undefined) return 'not-mounted';
  try {
    await execFileAsync('umount', [mountPoint]);
    return 'unmounted';
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? '');
    const busy = /busy/i.test(stderr);
    const dead = /not connected/i.test(stderr);
    if (busy && !options.lazyIfBusy) {
      throw new StrataError('STRATA_MOUNT_BUSY', `${mountPoint} is busy: close the files and shells using it (see \`fuser -vm ${mountPoint}\`) or pass --force to detach it lazily`, { cause: err });
    }
    if (!busy && !dead && (await mountAt(mountPoint)) === undefined) return 'unmounted';
    try {
      await execFileAsync('umount', ['-l', mountPoint]);
      return 'lazily-detached';
    } catch (lazyErr) {
      throw new StrataError('STRATA_MOUNT_FAILED', `cannot unmount ${mountPoint}: ${stderr.trim() || String(err)}`, { cause: lazyErr });
    }
  }
}
