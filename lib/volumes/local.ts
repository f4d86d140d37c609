/**
 * The `local` volume driver (moby's volume/local): one directory per volume, `<root>/volumes/<name>/_data`.
 *
 * On-disk layout under `<root>/volumes` (mode 0700: nothing but the daemon has business in it):
 *   <name>/_data            the volume's data, what attachments bind into union mounts
 *   .staging-<name>-<rand>  a volume being created (renamed to <name> once complete)
 *   .trash-<name>-<rand>    a volume being removed (deleted after its record is gone)
 *
 * A volume with options (`type`, `device`, `o`) is a real mount of that device on `_data` (a tmpfs, a bind of a
 * host dir, a block device), made when a union mount first attaches the volume and undone when the last one
 * releases it or the volume is removed, as moby's local driver does.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import { mountAt } from '../mounts/mountinfo.js';
import { runMount, runUmount } from './mount-command.js';
import type { VolumeRecord } from './types.js';

const OPTION_KEYS = ['type', 'device', 'o'] as const;

export class LocalDriver {
  readonly volumesDir: string;
  private readonly logger: Logger;

  /** Where a volume dir without a record goes (lost+found); without it, it is renamed to .orphan-<name>-<rand>. */
  private readonly quarantine: ((dir: string, name: string) => Promise<unknown>) | undefined;

  constructor(volumesDir: string, logger: Logger, quarantine?: (dir: string, name: string) => Promise<unknown>) {
    this.volumesDir = volumesDir;
    this.quarantine = quarantine;
    this.logger = logger.child({ driver: 'local' });
  }

  dataDir(name: string): string {
    return path.join(this.volumesDir, name, '_data');
  }

  /** Checks `--opt` values the way the local driver will use them; returns them normalised. */
  async validateOptions(options: Record<string, string>): Promise<Record<string, string>> {
    const result: Record<string, string> = {};
    for (const [key, value] of Object.entries(options)) {
      if (!(OPTION_KEYS as readonly string[]).includes(key)) {
        throw new StrataError('STRATA_BAD_OPTION', `the local driver has no option "${key}" (valid: ${OPTION_KEYS.join(', ')})`);
      }
      if (typeof value !== 'string' || /[\n\0]/.test(value)) throw new StrataError('STRATA_BAD_OPTION', `volume option ${key} must be a one-line string`);
      result[key] = value;
    }
    if (Object.keys(result).length > 0 && (result.type === undefined || result.type === '' || result.device === undefined || result.device === '')) {
      throw new StrataError('STRATA_BAD_OPTION', 'the local driver needs both --opt type=… and --opt device=… to mount a volume (for example type=tmpfs,device=tmpfs,o=size=64m)');
    }
    if (result.type !== undefined && !/^[a-z0-9._-]+$/.test(result.type)) throw new StrataError('STRATA_BAD_OPTION', `volume option type "${result.type}" is not a filesystem type name`);
    if (result.o !== undefined && /(^|,)bind(,|$)/.test(result.o)) {
      const device = result.device ?? '';
      if (!path.isAbsolute(device)) throw new StrataError('STRATA_BAD_OPTION', `a bind volume's device must be an absolute host path, got "${device}"`);
      const info = await stat(device).catch(() => undefined);
      if (info === undefined) throw new StrataError('STRATA_BAD_DIR', `the bind volume's device ${device} does not exist`);
    }
    return result;
  }

  /** Makes `<name>/_data` through a staging dir, so a crash never leaves a half-made volume under its name. */
  async create(name: string): Promise<void> {
    const staging = path.join(this.volumesDir, `.staging-${name}-${randomBytes(4).toString('hex')}`);
    await mkdir(path.join(staging, '_data'), { recursive: true, mode: 0o755 });
    try {
      await rename(staging, path.join(this.volumesDir, name));
    } catch (err) {
      await rm(staging, { recursive: true, force: true });
      throw err;
    }
  }

  async exists(name: string): Promise<boolean> {
    return (await lstat(this.dataDir(name)).catch(() => undefined))?.isDirectory() ?? false;
  }

  /**
   * Moves the volume out of its name (the caller then deletes its record) and returns the trash dir to delete last.
   * A mounted device is unmounted first, so that deleting the trash can never reach into the device.
   */
  async moveToTrash(record: VolumeRecord): Promise<string | undefined> {
    await this.unmount(record);
    const trash = path.join(this.volumesDir, `.trash-${record.Name}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(path.join(this.volumesDir, record.Name), trash);
    } catch (err) {
      // A volume whose dir is already gone (fsck reports it) can still lose its record.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return trash;
  }

  async deleteTrash(trash: string | undefined): Promise<void> {
    if (trash !== undefined) await rm(trash, { recursive: true, force: true });
  }

  /** Puts a trashed volume back under its name (its record could not be deleted). */
  async restoreFromTrash(trash: string | undefined, name: string): Promise<void> {
    if (trash !== undefined) await rename(trash, path.join(this.volumesDir, name));
  }

  /** Mounts the volume's device on `_data` if it has one and it is not mounted yet. */
  async mount(record: VolumeRecord): Promise<void> {
    const { type, device, o } = record.Options;
    if (type === undefined || device === undefined) return;
    const data = this.dataDir(record.Name);
    if ((await mountAt(data)) !== undefined) return;
    const args = ['-t', type, ...(o === undefined || o === '' ? [] : ['-o', o]), device, data];
    await runMount(args, `volume ${record.Name} (${type} ${device})`);
    this.logger.info({ volume: record.Name, type, device }, 'mounted volume device');
  }

  async unmount(record: VolumeRecord): Promise<void> {
    if (record.Options.type === undefined) return;
    const data = this.dataDir(record.Name);
    while ((await mountAt(data)) !== undefined) {
      await runUmount(data, { lazy: true }, `volume ${record.Name}`);
      this.logger.info({ volume: record.Name }, 'unmounted volume device');
    }
  }

  /** Apparent size of the data, each inode counted once (moby's directory.Size). */
  async usage(name: string): Promise<number> {
    const seen = new Set<string>();
    const walk = async (dir: string): Promise<number> => {
      let total = 0;
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        const full = path.join(dir, entry.name);
        const info = await lstat(full, { bigint: true }).catch(() => undefined);
        if (info === undefined) continue;
        const key = `${info.dev}:${info.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
        if (info.isDirectory()) total += await walk(full);
        else total += Number(info.size);
      }
      return total;
    };
    return walk(this.dataDir(name));
  }

  /**
   * Start-up clean-up against the records: finishes interrupted removals (trash without a record), rolls back
   * interrupted creations (staging dirs), and moves a volume dir that has no record to lost+found instead of deleting it,
   * since it may hold data; an empty one is simply removed.
   */
  async recover(known: ReadonlySet<string>): Promise<void> {
    for (const entry of await readdir(this.volumesDir)) {
      const full = path.join(this.volumesDir, entry);
      const trashed = /^\.trash-(.+)-[0-9a-f]{8}$/.exec(entry);
      if (trashed !== null && known.has(trashed[1]!) && !(await this.exists(trashed[1]!))) {
        // The record outlived a removal that failed before its batch: the volume is still wanted.
        this.logger.warn({ volume: trashed[1] }, 'restoring a volume whose removal was interrupted');
        await this.restoreFromTrash(full, trashed[1]!);
        continue;
      }
      if (entry.startsWith('.staging-') || trashed !== null) {
        this.logger.warn({ dir: full }, 'removing an interrupted volume creation or removal');
        await rm(full, { recursive: true, force: true });
        continue;
      }
      if (entry.startsWith('.orphan-') || known.has(entry)) continue;
      const contents = await readdir(path.join(full, '_data')).catch(() => undefined);
      if (contents !== undefined && contents.length === 0) {
        this.logger.warn({ dir: full }, 'removing an empty volume dir that has no record');
        await rm(full, { recursive: true, force: true });
      } else if (this.quarantine !== undefined) {
        await this.quarantine(full, entry);
      } else {
        const aside = path.join(this.volumesDir, `.orphan-${entry}-${randomBytes(4).toString('hex')}`);
        this.logger.warn({ dir: full, movedTo: aside }, 'a volume dir has no record; set aside, not deleted');
        await rename(full, aside);
      }
    }
  }
}
