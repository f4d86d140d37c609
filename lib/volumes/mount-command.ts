/**
 * mount(8) and umount(8) for volumes and attachments. Node has no mount(2), so these go through util-linux, as
 * lib/mounts/mountinfo.ts does for unmounting. Targets are passed with --no-canonicalize so that a
 * /proc/<pid>/fd/<n> target reaches mount(2) as it is: the kernel then mounts on the exact directory that fd holds,
 * not on whatever a path string resolves to by the time mount(8) runs.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { StrataError } from '../errors.js';

const execFileAsync = promisify(execFile);

function stderrOf(err: unknown): string {
  return String((err as { stderr?: string }).stderr ?? (err as Error).message ?? err).trim();
}

/** Runs `mount --no-canonicalize ARGS…`; failures become STRATA_MOUNT_FAILED naming `what`. */
export async function runMount(args: string[], what: string): Promise<void> {
  try {
    await execFileAsync('mount', ['--no-canonicalize', ...args]);
  } catch (err) {
    throw new StrataError('STRATA_MOUNT_FAILED', `cannot mount ${what}: ${stderrOf(err)}`, { cause: err });
  }
}

/**
 * Unmounts the mount at `mountPoint`. A busy one fails with STRATA_MOUNT_BUSY unless `lazy`, which detaches it at
 * once (MNT_DETACH) and lets the kernel release it when its last user leaves.
 */
export async function runUmount(mountPoint: string, options: { lazy: boolean }, what: string): Promise<'unmounted' | 'lazily-detached'> {
  try {
    await execFileAsync('umount', ['--no-canonicalize', mountPoint]);
    return 'unmounted';
  } catch (err) {
    const stderr = stderrOf(err);
    if (/busy/i.test(stderr) && !options.lazy) {
      throw new StrataError('STRATA_MOUNT_BUSY', `${what} at ${mountPoint} is busy: close the files and shells using it (see \`fuser -vm ${mountPoint}\`) or pass --force`, { cause: err });
    }
    try {
      await execFileAsync('umount', ['--no-canonicalize', '-l', mountPoint]);
      return 'lazily-detached';
    } catch (lazyErr) {
      throw new StrataError('STRATA_MOUNT_FAILED', `cannot unmount ${what} at ${mountPoint}: ${stderr}`, { cause: lazyErr });
    }
  }
}
