/**
 * Attachments: named volumes, host binds and tmpfs mounts stacked on a union mount (docs/volumes.md).
 *
 * Each attachment is a real bind mount on a directory (or file) of the merged FUSE view, so I/O under it never
 * reaches the FUSE server: it runs on the volume's, host dir's or tmpfs's own filesystem at kernel speed, and
 * never touches the upper layer. A tmpfs is mounted once at `<root>/tmpfs/<mountId>/<index>` and bound from there,
 * so its contents outlive a restart of the mount's helper and of the daemon; it is unmounted when the union mount
 * is unmounted or removed on purpose.
 *
 * Invariants:
 *  - A destination is resolved inside the merged root, component by component with lstat/readlink: `..` stops
 *    at the root and a symlink (absolute or relative) is followed as if the root were `/`, the way a container
 *    would see it. Missing components are created through the merged view (so they land in the upper).
 *  - The bind goes onto /proc/<pid>/fd/<n> of the resolved directory opened with O_NOFOLLOW, after checking the
 *    fd is at exactly the resolved path: a path swapped under us after resolution cannot redirect the mount
 *    outside the root.
 *  - Attachments are mounted parents first (by destination depth) and taken down in the reverse order, before the
 *    union mount itself, so an unmount never leaves a submount behind. A refused (busy) unmount puts back what it
 *    had taken down, leaving the mount as it was.
 */
import { constants as fsConstants } from 'node:fs';
import { lstat, mkdir, open, readdir, readlink, realpath, rm, stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { BatchOp } from '../store/metastore.js';
import { runMount, runUmount } from '../volumes/mount-command.js';
import type { VolumeService } from '../volumes/service.js';
import { mountAt, readMountTable } from './mountinfo.js';

const execFileAsync = promisify(execFile);

export type AttachmentType = 'volume' | 'bind' | 'tmpfs';

/** What a user asks for (the API's `Mounts`, after Docker's HostConfig.Mounts). */
export interface AttachmentRequest {
  Type: AttachmentType;
  /** Volume name (absent: a new anonymous volume) or absolute host path of a bind; unused for tmpfs. */
  Source?: string;
  /** Where it appears inside the union mount. */
  Target: string;
  ReadOnly?: boolean;
  NoCopy?: boolean;
  TmpfsSize?: number;
  TmpfsMode?: number;
}

/** What the mount record keeps (MountRecord.Mounts): validated, with volume names and real host paths filled in. */
export interface Attachment {
  Type: AttachmentType;
  /** Volume name, real host path, or "" for tmpfs. */
  Source: string;
  /** Lexically clean absolute path inside the union mount. */
  Destination: string;
  ReadOnly: boolean;
  NoCopy: boolean;
  TmpfsSize?: number;
  TmpfsMode?: number;
}

/** Docker's inspect `Mounts` entry. */
export interface AttachmentView {
  Type: AttachmentType;
  Name?: string;
  Source: string;
  Destination: string;
  Driver?: string;
  Mode: string;
  RW: boolean;
  Propagation: string;
}

const MAX_SYMLINKS = 40;
const DEFAULT_TMPFS_MODE = 0o1777;

// ---- flag parsing (the CLI's --volume, --bind, --tmpfs) -----------------------------------------------------------

function bad(message: string): StrataError {
  return new StrataError('STRATA_BAD_OPTION', message);
}

/** "64m", "1g", "4096" -> bytes (tmpfs's size= units). */
export function parseSize(text: string): number {
  const match = /^(\d+)([kmg]?)$/i.exec(text.trim());
  if (match === null) throw bad(`size "${text}" is not a number of bytes with an optional k, m or g suffix`);
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  const bytes = Number(match[1]) * scale;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw bad(`size "${text}" is out of range`);
  return bytes;
}

function splitModes(flag: string, text: string | undefined, allowed: string[]): Set<string> {
  const modes = new Set((text ?? '').split(',').filter((m) => m !== ''));
  for (const mode of modes) if (!allowed.includes(mode)) throw bad(`${flag}: unknown mode "${mode}" (valid: ${allowed.join(', ')})`);
  if (modes.has('ro') && modes.has('rw')) throw bad(`${flag}: ro and rw together`);
  return modes;
}

/** `--volume NAME:/path[:ro|rw|nocopy,…]`, or `--volume /path[:…]` for a new anonymous volume. */
export function parseVolumeFlag(flag: string): AttachmentRequest {
  const parts = flag.split(':');
  const named = parts[0] !== undefined && !parts[0].startsWith('/');
  const [source, target, modeText, ...rest] = named ? parts : [undefined, ...parts];
  if (target === undefined || target === '' || rest.length > 0) throw bad(`--volume "${flag}": use NAME:/path[:ro|nocopy] or /path[:ro|nocopy]`);
  const modes = splitModes(`--volume ${flag}`, modeText, ['ro', 'rw', 'nocopy']);
  return { Type: 'volume', ...(source === undefined ? {} : { Source: source }), Target: target, ReadOnly: modes.has('ro'), NoCopy: modes.has('nocopy') };
}

/** `--bind /host/dir:/path[:ro|rw]`; a relative host path is taken from `cwd`. */
export function parseBindFlag(flag: string, cwd: string): AttachmentRequest {
  const [source, target, modeText, ...rest] = flag.split(':');
  if (source === undefined || source === '' || target === undefined || target === '' || rest.length > 0) throw bad(`--bind "${flag}": use /host/path:/path[:ro]`);
  const modes = splitModes(`--bind ${flag}`, modeText, ['ro', 'rw']);
  return { Type: 'bind', Source: path.resolve(cwd, source), Target: target, ReadOnly: modes.has('ro') };
}

/** `--tmpfs /path[:size=64m,mode=1777,ro]`. */
export function parseTmpfsFlag(flag: string): AttachmentRequest {
  const colon = flag.indexOf(':');
  const target = colon < 0 ? flag : flag.slice(0, colon);
  const request: AttachmentRequest = { Type: 'tmpfs', Target: target, ReadOnly: false };
  for (const option of colon < 0 ? [] : flag.slice(colon + 1).split(',').filter((o) => o !== '')) {
    const [key, value] = option.split('=', 2) as [string, string | undefined];
    if (key === 'size' && value !== undefined) request.TmpfsSize = parseSize(value);
    else if (key === 'mode' && value !== undefined && /^[0-7]{3,4}$/.test(value)) request.TmpfsMode = parseInt(value, 8);
    else if (key === 'ro' && value === undefined) request.ReadOnly = true;
    else if (key === 'rw' && value === undefined) request.ReadOnly = false;
    else throw bad(`--tmpfs "${flag}": unknown option "${option}" (valid: size=N[k|m|g], mode=OCTAL, ro, rw)`);
  }
  return request;
}

/** A clean absolute destination, never "/" (the union mount itself). */
export function cleanDestination(target: unknown): string {
  if (typeof target !== 'string' || !target.startsWith('/') || target.includes('\0')) throw bad(`mount destination "${String(target)}" must be an absolute path`);
  const clean = path.posix.normalize(target).replace(/\/+$/, '');
  if (clean === '' || clean === '/') throw bad(`mount destination "${target}" is the root of the mount; name a directory inside it`);
  return clean;
}

// ---- resolving inside the merged root -------------------------------------------------------------------------

/**
 * Resolves `destination` inside `root` as a process chrooted into `root` would, creating what is missing (dirs,
 * and the last component as an empty file when `leaf` is 'file'). Returns the real path and whether the last
 * component existed before.
 */
export async function resolveInRoot(root: string, destination: string, leaf: 'dir' | 'file'): Promise<{ path: string; existed: boolean }> {
  const resolved: string[] = [];
  const queue = destination.split('/').filter((c) => c !== '' && c !== '.');
  let links = 0;
  let existed = true;
  while (queue.length > 0) {
    const component = queue.shift()!;
    if (component === '.') continue;
    if (component === '..') {
      resolved.pop();
      continue;
    }
    const full = path.join(root, ...resolved, component);
    const last = queue.length === 0;
    let info = await lstat(full).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (info === undefined) {
      if (last) existed = false;
      if (last && leaf === 'file') await (await open(full, fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_WRONLY | fsConstants.O_NOFOLLOW, 0o644)).close();
      else await mkdir(full, { mode: 0o755 });
      info = await lstat(full);
    }
    if (info.isSymbolicLink()) {
      links += 1;
      if (links > MAX_SYMLINKS) throw bad(`mount destination "${destination}" has too many levels of symbolic links (ELOOP)`);
      const link = await readlink(full);
      if (link.startsWith('/')) resolved.length = 0;
      queue.unshift(...link.split('/').filter((c) => c !== '' && c !== '.'));
      continue;
    }
    if (!last && !info.isDirectory()) throw bad(`mount destination "${destination}": ${path.join('/', ...resolved, component)} is not a directory in the mount`);
    resolved.push(component);
    if (last && leaf === 'dir' && !info.isDirectory()) throw bad(`mount destination "${destination}" exists in the mount and is not a directory`);
    if (last && leaf === 'file' && info.isDirectory()) throw bad(`mount destination "${destination}" is a directory in the mount but the bind source is a file`);
  }
  if (resolved.length === 0) throw bad(`mount destination "${destination}" resolves to the root of the mount`);
  return { path: path.join(root, ...resolved), existed };
}

/** Opens `where` without following a last-component symlink and checks the fd is at exactly that path. */
async function openExactly(where: string, directory: boolean) {
  const handle = await open(where, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK | (directory ? fsConstants.O_DIRECTORY : 0));
  try {
    const actual = await readlink(`/proc/self/fd/${handle.fd}`);
    if (actual !== where) throw new StrataError('STRATA_MOUNT_FAILED', `${where} changed while it was being attached to (it now leads to ${actual}); not mounting`);
    return handle;
  } catch (err) {
    await handle.close();
    throw err;
  }
}

// ---- the attachments of union mounts --------------------------------------------------------------------------

interface AttachableRecord {
  Id: string;
  Name: string;
  Target: string;
  Mounts?: Attachment[];
}

export class Attachments {
  private readonly volumes: VolumeService | undefined;
  private readonly tmpfsRoot: string;
  private readonly logger: Logger;
  /** mount id -> real paths this daemon mounted on, in mount order. */
  private readonly attached = new Map<string, string[]>();

  constructor(volumes: VolumeService | undefined, rootDir: string, logger: Logger) {
    this.volumes = volumes;
    this.tmpfsRoot = path.join(rootDir, 'tmpfs');
    this.logger = logger;
  }

  /**
   * Validates requests for a new mount at `target`: bind sources exist and lie outside the target (a source under
   * it would be the union mount itself once live), volumes exist (made if missing), destinations are unique.
   */
  async prepare(requests: readonly AttachmentRequest[] | undefined, target: string): Promise<Attachment[]> {
    const result: Attachment[] = [];
    for (const request of requests ?? []) {
      const destination = cleanDestination(request.Target);
      if (result.some((a) => a.Destination === destination)) throw bad(`two mounts have the destination ${destination}`);
      const base = { Destination: destination, ReadOnly: request.ReadOnly === true, NoCopy: request.NoCopy === true };
      if (request.Type === 'volume') {
        if (this.volumes === undefined) throw new StrataError('STRATA_UNSUPPORTED', 'this daemon has no volume service');
        const volume = await this.volumes.ensure(request.Source === '' ? undefined : request.Source);
        result.push({ Type: 'volume', Source: volume.Name, ...base });
      } else if (request.Type === 'bind') {
        if (typeof request.Source !== 'string' || !path.isAbsolute(request.Source)) throw bad(`a bind needs an absolute host path, got "${String(request.Source)}"`);
        const real = await realpath(request.Source).catch((err: unknown) => {
          throw new StrataError('STRATA_BAD_DIR', `bind source ${request.Source} does not exist (a bind never creates its host path)`, { cause: err });
        });
        if (real === target || real.startsWith(`${target}/`)) throw bad(`bind source ${request.Source} is inside the mount's target ${target}; bind a directory outside it`);
        result.push({ Type: 'bind', Source: real, ...base, NoCopy: false });
      } else if (request.Type === 'tmpfs') {
        if (request.Source !== undefined && request.Source !== '') throw bad('a tmpfs mount takes no source');
        const size = request.TmpfsSize;
        if (size !== undefined && (!Number.isSafeInteger(size) || size <= 0)) throw bad(`tmpfs size ${String(size)} must be a positive number of bytes`);
        const mode = request.TmpfsMode;
        if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o7777)) throw bad(`tmpfs mode ${String(mode)} is not a file mode`);
        result.push({ Type: 'tmpfs', Source: '', ...base, NoCopy: false, ...(size === undefined ? {} : { TmpfsSize: size }), ...(mode === undefined ? {} : { TmpfsMode: mode }) });
      } else {
        throw bad(`unknown mount type "${String((request as { Type?: unknown }).Type)}" (valid: volume, bind, tmpfs)`);
      }
    }
    return result;
  }

  static volumeNames(attachments: readonly Attachment[] | undefined): string[] {
    return [...new Set((attachments ?? []).filter((a) => a.Type === 'volume').map((a) => a.Source))];
  }

  /** Takes the mount's volume refs and writes them in the same batch as `recordOps` (the mount record). */
  async commitWithRefs(record: AttachableRecord, recordOps: BatchOp[], write: (ops: BatchOp[]) => Promise<void>): Promise<void> {
    const names = Attachments.volumeNames(record.Mounts);
    if (names.length === 0 || this.volumes === undefined) return write(recordOps);
    return this.volumes.reference(names, { mountId: record.Id, mountName: record.Name }, (refOps) => write([...refOps, ...recordOps]));
  }

  /** Drops the mount's volume refs in the same batch as `recordOps` (the record's deletion). */
  async releaseWithRefs(record: AttachableRecord, recordOps: BatchOp[], write: (ops: BatchOp[]) => Promise<void>): Promise<void> {
    const names = Attachments.volumeNames(record.Mounts);
    if (names.length === 0 || this.volumes === undefined) return write(recordOps);
    return this.volumes.release(names, record.Id, (refOps) => write([...refOps, ...recordOps]));
  }

  /**
   * Mounts every attachment on the live union mount, parents first. `fresh` (the mount's first start) fills an
   * empty volume with what the image has at its destination, unless nocopy. Already-mounted ones are left alone.
   * On failure, what this call mounted is taken down again.
   */
  async attach(record: AttachableRecord, log: Logger, options: { fresh: boolean }): Promise<void> {
    const list = record.Mounts ?? [];
    if (list.length === 0) return;
    const order = list.map((a, index) => ({ a, index }))
      .sort((x, y) => x.a.Destination.split('/').length - y.a.Destination.split('/').length);
    const done = this.attached.get(record.Id) ?? [];
    this.attached.set(record.Id, done);
    const mountedNow: string[] = [];
    try {
      for (const { a, index } of order) {
        const where = await this.attachOne(record, a, index, log, options.fresh);
        if (where === undefined) continue;
        mountedNow.push(where);
        if (!done.includes(where)) done.push(where);
      }
    } catch (err) {
      for (const where of mountedNow.reverse()) {
        await runUmount(where, { lazy: true }, 'attachment').catch(() => undefined);
        done.splice(done.indexOf(where), 1);
      }
      throw err;
    }
  }

  /**
   * Takes the attachments down (deepest first), then runs `unmountUnion`. If either refuses because something
   * is busy, what was taken down is put back and the error rethrown, so the mount stays whole.
   */
  async unmountAll<T>(record: AttachableRecord, log: Logger, options: { lazyIfBusy: boolean }, unmountUnion: () => Promise<T>): Promise<T> {
    const done = this.attached.get(record.Id) ?? [];
    let detachedAny = false;
    try {
      for (const where of [...done].reverse()) {
        if ((await mountAt(where)) === undefined) {
          done.splice(done.indexOf(where), 1);
          continue;
        }
        try {
          const outcome = await runUmount(where, { lazy: options.lazyIfBusy }, 'attachment');
          if (outcome === 'lazily-detached') log.warn({ where }, 'attachment was busy and has been detached lazily');
        } catch (err) {
          // A mount on a dead FUSE mount cannot even be looked up; the union's (lazy, recursive) unmount takes it.
          if (err instanceof StrataError && err.code === 'STRATA_MOUNT_BUSY') throw err;
          log.warn({ err, where }, 'could not unmount an attachment; leaving it to the union unmount');
        }
        detachedAny = true;
        done.splice(done.indexOf(where), 1);
      }
      const result = await unmountUnion();
      this.attached.delete(record.Id);
      return result;
    } catch (err) {
      if (detachedAny && (await mountAt(record.Target))?.fsType.startsWith('fuse') === true) {
        await this.attach(record, log, { fresh: false }).catch((reattachErr: unknown) => log.error({ err: reattachErr }, 'could not put back the attachments after a refused unmount'));
      }
      throw err;
    }
  }

  /** A dead helper's mount was detached (recursively, with its attachments): forget them. */
  forget(record: AttachableRecord): void {
    this.attached.delete(record.Id);
  }

  /** Unmounts and deletes the mount's tmpfs backings: their contents end with an unmount or removal on purpose. */
  async release(record: AttachableRecord): Promise<void> {
    this.attached.delete(record.Id);
    await this.removeTmpfsDir(path.join(this.tmpfsRoot, record.Id));
  }

  /** Start-up: tmpfs backings of mounts that no longer exist are unmounted and removed. */
  async recover(knownIds: ReadonlySet<string>): Promise<void> {
    const entries = await readdir(this.tmpfsRoot).catch(() => [] as string[]);
    for (const entry of entries) {
      if (knownIds.has(entry)) continue;
      this.logger.warn({ dir: path.join(this.tmpfsRoot, entry) }, 'removing the tmpfs backings of a mount that no longer exists');
      await this.removeTmpfsDir(path.join(this.tmpfsRoot, entry));
    }
  }

  view(record: AttachableRecord): AttachmentView[] {
    return (record.Mounts ?? []).map((a) => {
      const mode = [a.ReadOnly ? 'ro' : 'rw', ...(a.NoCopy ? ['nocopy'] : [])].join(',');
      const common = { Destination: a.Destination, Mode: mode, RW: !a.ReadOnly, Propagation: '' };
      if (a.Type === 'volume') return { Type: a.Type, Name: a.Source, Source: this.volumes?.driver.dataDir(a.Source) ?? '', Driver: 'local', ...common };
      if (a.Type === 'tmpfs') {
        const extra = [...(a.TmpfsSize === undefined ? [] : [`size=${a.TmpfsSize}`]), `mode=${(a.TmpfsMode ?? DEFAULT_TMPFS_MODE).toString(8)}`];
        return { Type: a.Type, Source: 'tmpfs', ...common, Mode: [mode, ...extra].join(',') };
      }
      return { Type: a.Type, Source: a.Source, ...common };
    });
  }

  // ---- internals ---------------------------------------------------------------------------------------------

  private async sourceOf(record: AttachableRecord, a: Attachment, index: number): Promise<string> {
    if (a.Type === 'volume') {
      if (this.volumes === undefined) throw new StrataError('STRATA_UNSUPPORTED', 'this daemon has no volume service');
      return this.volumes.prepare(a.Source);
    }
    if (a.Type === 'bind') {
      if ((await stat(a.Source).catch(() => undefined)) === undefined) throw new StrataError('STRATA_BAD_DIR', `bind source ${a.Source} of mount "${record.Name}" does not exist`);
      return a.Source;
    }
    const backing = path.join(this.tmpfsRoot, record.Id, String(index));
    if ((await mountAt(backing)) === undefined) {
      await mkdir(backing, { recursive: true, mode: 0o700 });
      const options = ['nosuid', 'nodev', `mode=${(a.TmpfsMode ?? DEFAULT_TMPFS_MODE).toString(8)}`, ...(a.TmpfsSize === undefined ? [] : [`size=${a.TmpfsSize}`])];
      await runMount(['-t', 'tmpfs', '-o', options.join(','), 'tmpfs', backing], `a tmpfs for ${a.Destination}`);
    }
    return backing;
  }

  /** Mounts one attachment; returns where, or undefined if it was already mounted. */
  private async attachOne(record: AttachableRecord, a: Attachment, index: number, log: Logger, fresh: boolean): Promise<string | undefined> {
    const source = await this.sourceOf(record, a, index);
    const sourceInfo = await stat(source);
    const directory = sourceInfo.isDirectory();
    const { path: where, existed } = await resolveInRoot(record.Target, a.Destination, directory ? 'dir' : 'file');
    const present = await mountAt(where);
    if (present !== undefined && (this.attached.get(record.Id) ?? []).includes(where)) return undefined;

    if (fresh && a.Type === 'volume' && !a.NoCopy && existed && directory && (await readdir(source)).length === 0) {
      // Docker's copy-up of image content into a new, empty volume: cp -a of "." also copies the dir's owner/mode.
      await execFileAsync('cp', ['-a', '--', `${where}/.`, `${source}/`]).catch((err: unknown) => {
        throw new StrataError('STRATA_MOUNT_FAILED', `cannot copy the image's ${a.Destination} into volume ${a.Source}: ${String((err as { stderr?: string }).stderr ?? err).trim()}`, { cause: err });
      });
      log.info({ volume: a.Source, destination: a.Destination }, 'filled the new volume with the image content');
    }

    const handle = await openExactly(where, directory);
    try {
      await runMount(['--bind', source, `/proc/${process.pid}/fd/${handle.fd}`], `${a.Type} ${a.Source || 'tmpfs'} on ${a.Destination}`);
    } finally {
      await handle.close();
    }
    if (a.ReadOnly) {
      try {
        const mounted = await openExactly(where, directory);
        try {
          const info = await mounted.stat();
          if (info.dev !== sourceInfo.dev || info.ino !== sourceInfo.ino) throw new StrataError('STRATA_MOUNT_FAILED', `${where} is not the new mount of ${a.Destination} any more; not remounting it read-only`);
          await runMount(['-o', 'remount,bind,ro', `/proc/${process.pid}/fd/${mounted.fd}`], `${a.Destination} read-only`);
        } finally {
          await mounted.close();
        }
      } catch (err) {
        await runUmount(where, { lazy: true }, 'attachment').catch(() => undefined);
        throw err;
      }
    }
    log.info({ type: a.Type, source: a.Source || 'tmpfs', destination: a.Destination, where, readOnly: a.ReadOnly }, 'attached');
    return where;
  }

  private async removeTmpfsDir(dir: string): Promise<void> {
    const inside = (await readMountTable()).filter((m) => m.mountPoint.startsWith(`${dir}/`)).map((m) => m.mountPoint).reverse();
    for (const mountPoint of inside) await runUmount(mountPoint, { lazy: true }, 'tmpfs');
    // Only once nothing is mounted inside may the dir be deleted: rm -r would otherwise empty a live tmpfs.
    if ((await readMountTable()).some((m) => m.mountPoint.startsWith(`${dir}/`))) {
      throw new StrataError('STRATA_MOUNT_BUSY', `a tmpfs under ${dir} is still mounted; not deleting it`);
    }
    await rm(dir, { recursive: true, force: true });
  }
}
