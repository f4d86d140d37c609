/**
 * Applies one OCI layer tar to an empty directory, producing kernel overlayfs's on-disk format:
 *  - `.wh.NAME` becomes a whiteout (a char device 0/0 named NAME);
 *  - `.wh..wh..opq` marks its directory opaque (xattr trusted.overlay.opaque=y);
 *  - owners, modes (incl. setuid/setgid/sticky), nanosecond times (PAX), SCHILY.xattr.* (incl. security.capability),
 *    hard links within the layer, symlinks, device nodes and fifos are kept.
 *
 * Safety invariants (the input is untrusted):
 *  - every entry name is relative and has no `..` component; a hard link target likewise;
 *  - no entry is created through a symlink: each parent of an entry must be a real directory of this layer,
 *    so a symlink entry can never redirect a later entry outside the target dir;
 *  - a hard link must point at a non-directory already extracted in this layer;
 *  - an entry larger than `maxEntryBytes` is refused before a byte of it is written.
 * Any failure throws a StrataError naming the entry; the caller discards the whole target dir.
 */
import { chmodSync, closeSync, fchmodSync, fchownSync, lchownSync, linkSync, lstatSync, mkdirSync, openSync, symlinkSync, writevSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type tarStream from 'tar-stream';
import type { Header as Headers } from 'tar-stream';
import { FsError, StrataError, fsError, isErrno } from '../errors.js';
import type { Logger } from '../log.js';
import type { StrataSys } from '../native/index.js';
import { OVL_OPAQUE_XATTR, OVL_XATTR_PREFIX } from '../union/util.js';

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

export interface ApplyOptions {
  /** Names the input in errors (a file name or blob digest). */
  what: string;
  maxEntryBytes: number;
  logger: Logger;
  sys: StrataSys;
}

export interface ApplyResult {
  entries: number;
  /** Bytes of regular-file data written. */
  contentBytes: number;
}

/**
 * Key under which a PAX header carries its raw (binary) SCHILY.xattr.* values: tar-stream decodes PAX values as
 * UTF-8, which mangles binary xattrs such as security.capability. A NUL can never appear in a real PAX key.
 */
const RAW_XATTRS = '\0rawXattrs';

interface TimeSpec { sec: number; nsec: number }

/** Splits a PAX time ("1700000000.123456789") into seconds and nanoseconds without float rounding. */
export function parsePaxTime(value: string | undefined): TimeSpec | null {
  if (value === undefined) return null;
  const m = /^(-?\d+)(?:\.(\d{1,9})\d*)?$/.exec(value.trim());
  if (!m) return null;
  return { sec: Number(m[1]), nsec: m[2] ? Number(m[2].padEnd(9, '0')) : 0 };
}

/** Parses PAX records ("LEN key=value\n") keeping SCHILY.xattr.* values as bytes. */
export function decodePaxXattrs(buf: Buffer): Map<string, Buffer> {
  const xattrs = new Map<string, Buffer>();
  let rest = buf;
  while (rest.length > 0) {
    const space = rest.indexOf(0x20);
    if (space <= 0) break;
    const len = Number.parseInt(rest.toString('latin1', 0, space), 10);
    if (!Number.isFinite(len) || len <= space || len > rest.length) break;
    const record = rest.subarray(space + 1, len - 1); // drop the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq > 0) {
      const key = record.toString('utf8', 0, eq);
      if (key.startsWith('SCHILY.xattr.')) xattrs.set(key.slice('SCHILY.xattr.'.length), Buffer.from(record.subarray(eq + 1)));
    }
    rest = rest.subarray(len);
  }
  return xattrs;
}

/**
 * An extractor whose PAX headers also carry the raw xattr bytes (per instance; tar-stream itself is untouched).
 * tar-stream is loaded on first use: a command that untars nothing (a pull stores blobs packed) starts without it.
 */
async function createExtractor(): Promise<tarStream.Extract> {
  const { default: tarStreamModule } = await import('tar-stream');
  const extractor = tarStreamModule.extract();
  type Internals = { _header: { type: string }; _pax: Record<string, unknown> | null; _decodeLongHeader(buf: Buffer): void };
  const internals = extractor as unknown as Internals;
  const decode = internals._decodeLongHeader;
  if (typeof decode !== 'function') throw new StrataError('STRATA_INTERNAL', 'tar-stream internals changed: _decodeLongHeader is missing');
  internals._decodeLongHeader = function (this: Internals, buf: Buffer) {
    decode.call(this, buf);
    if (this._header.type === 'pax-header' && this._pax) this._pax[RAW_XATTRS] = decodePaxXattrs(buf);
  };
  return extractor;
}

/**
 * Normalises an entry or link name to its path components; throws for absolute names and `..`.
 * The empty array is the layer root ("./").
 */
export function safeComponents(name: string, entry: string, what: string): string[] {
  if (name.includes('\0')) throw badEntry(what, entry, 'contains a NUL byte');
  if (name.startsWith('/')) throw badEntry(what, entry, `has an absolute path "${name}"`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw badEntry(what, entry, `has a ".." component in "${name}"`);
  return parts;
}

function badEntry(what: string, entry: string, problem: string): StrataError {
  return new StrataError('STRATA_BAD_ARCHIVE', `${what}: entry "${entry}" ${problem}`);
}

/** Linux makedev(3) for numbers up to 2^53. */
export function makeDev(major: number, minor: number): number {
  return (minor & 0xff) + ((major & 0xfff) * 0x100) + ((minor & ~0xff) * 0x1000) + Math.floor(major / 0x1000) * 0x100000000000;
}

type StreamStage = NodeJS.ReadableStream | NodeJS.ReadWriteStream;

/** Pipes `source` through `stages` (decompression, hashing) into the extractor and applies every entry to `targetDir`. */
export async function applyLayerTar(
  source: Readable,
  stages: readonly StreamStage[],
  targetDir: string,
  options: ApplyOptions,
): Promise<ApplyResult> {
  const applier = new LayerTarApplier(targetDir, options);
  return applier.apply(source, stages);
}

interface DeferredDirTimes { full: string; depth: number; atime: TimeSpec; mtime: TimeSpec }

class LayerTarApplier {
  /** Relative paths known to be real directories of this layer ('' is the root). */
  private readonly knownDirs = new Set<string>(['']);
  private readonly dirTimes = new Map<string, DeferredDirTimes>();
  private entries = 0;
  private contentBytes = 0;
  private lastEntry = '(none)';
  private readonly log: Logger;

  constructor(private readonly root: string, private readonly options: ApplyOptions) {
    this.log = options.logger;
  }

  async apply(input: Readable, stages: readonly StreamStage[]): Promise<ApplyResult> {
    const extractor = await createExtractor();
    const piping = pipeline([input, ...stages, extractor as unknown as NodeJS.WritableStream]);
    let streamError: unknown;
    piping.catch((err: unknown) => { streamError = err; }); // surfaced by the iterator or the final await
    try {
      for await (const entry of extractor) {
        const header = entry.header;
        this.lastEntry = header.name;
        try {
          await this.applyEntry(header, entry as unknown as Readable);
        } finally {
          entry.resume(); // drain whatever the entry did not consume
        }
        this.entries += 1;
      }
      await piping;
    } catch (err) {
      input.destroy();
      if (err instanceof StrataError || err instanceof FsError) throw err;
      // A system call of ours failed (ENOSPC, EPERM...): that is the cause, not the stream torn down after it.
      if ((err as { syscall?: string }).syscall !== undefined) throw this.explain(err);
      // The iterator only reports "Stream was destroyed"; the pipeline has the cause (gunzip, truncation, limits).
      await piping.catch(() => undefined);
      throw this.explain(streamError ?? err);
    }
    // Directory times last, deepest first: creating children changes a directory's mtime.
    const dirs = [...this.dirTimes.values()].sort((a, b) => b.depth - a.depth);
    for (const d of dirs) this.setTimes(d.full, d.atime, d.mtime);
    return { entries: this.entries, contentBytes: this.contentBytes };
  }

  /** Turns stream and parser errors into one STRATA_BAD_ARCHIVE naming where in the input it happened. */
  private explain(err: unknown): Error {
    if (err instanceof StrataError || err instanceof FsError) return err;
    const e = err as { code?: string; message?: string; syscall?: string };
    if (e.syscall !== undefined && e.code !== undefined) {
      return fsError(e.code, `${this.options.what}: entry "${this.lastEntry}": ${e.message ?? e.code}`, err);
    }
    const message = e.message ?? String(err);
    const where = this.entries === 0 ? 'at the start' : `after entry "${this.lastEntry}"`;
    return new StrataError('STRATA_BAD_ARCHIVE', `${this.options.what}: truncated or corrupt tar ${where}: ${message}`, { cause: err });
  }

  private async applyEntry(header: Headers, data: Readable): Promise<void> {
    const what = this.options.what;
    const entryName = header.name;
    const parts = safeComponents(entryName, entryName, what);
    const size = header.size ?? 0;
    if (!(size >= 0) || size > this.options.maxEntryBytes) {
      throw badEntry(what, entryName, `claims ${size} bytes, above the limit of ${this.options.maxEntryBytes}`);
    }
    const base = parts.at(-1) ?? '';
    const parentParts = parts.slice(0, -1);

    if (base === OPAQUE_MARKER) {
      const dirRel = await this.ensureParents(parts, entryName);
      this.options.sys.lsetxattr(path.join(this.root, dirRel), OVL_OPAQUE_XATTR, Buffer.from('y'), 0);
      return;
    }
    if (base.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) {
      this.log.debug({ entry: entryName }, 'skipping aufs metadata entry');
      return;
    }
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const hidden = base.slice(WHITEOUT_PREFIX.length);
      if (hidden === '' || hidden === '.' || hidden === '..') throw badEntry(what, entryName, 'is a whiteout without a name');
      const rel = [...parentParts, hidden];
      await this.ensureParents(rel, entryName);
      const full = path.join(this.root, ...rel);
      await this.createReplacing(rel, full, () => this.options.sys.mknod(full, S_IFCHR, 0));
      return;
    }

    if (parts.length === 0) {
      // "./": the layer root itself; only its metadata applies.
      if (header.type !== 'directory') throw badEntry(what, entryName, 'names the layer root but is not a directory');
      this.setMetadata(this.root, header, false);
      this.deferDirTimes('', this.root, header);
      return;
    }

    await this.ensureParents(parts, entryName);
    const rel = parts.join('/');
    const full = path.join(this.root, ...parts);
    const mode = (header.mode ?? 0o644) & 0o7777;

    switch (header.type) {
      case 'directory': {
        try {
          mkdirSync(full, { mode: 0o700 });
        } catch (err) {
          if (!isErrno(err, 'EEXIST')) throw err;
          if (!lstatSync(full).isDirectory()) await this.createReplacing(parts, full, () => mkdirSync(full, { mode: 0o700 }));
        }
        this.knownDirs.add(rel);
        this.setMetadata(full, header, false);
        this.deferDirTimes(rel, full, header);
        return;
      }
      case 'file':
      case 'contiguous-file': {
        if (Object.keys((header.pax as Record<string, unknown> | null | undefined) ?? {}).some((k) => k.startsWith('GNU.sparse.'))) {
          throw new StrataError('STRATA_UNSUPPORTED', `${what}: entry "${entryName}" is a GNU sparse file, which layer tars may not use`);
        }
        let fd = -1;
        await this.createReplacing(parts, full, () => { fd = openSync(full, 'wx', 0o600); });
        try {
          await writeEntryData(data, fd);
          // Metadata through the fd, after the data: writing clears setuid bits and security.capability.
          fchownSync(fd, header.uid ?? 0, header.gid ?? 0);
          fchmodSync(fd, mode);
          for (const [name, value] of this.xattrsOf(header)) this.options.sys.fsetxattr(fd, name, value, 0);
          const [atime, mtime] = timesOf(header);
          this.options.sys.futimens(fd, atime.sec, atime.nsec, mtime.sec, mtime.nsec);
        } finally {
          closeSync(fd);
        }
        this.contentBytes += size;
        return;
      }
      case 'link': {
        const targetName = header.linkname ?? '';
        const targetParts = safeComponents(targetName, entryName, what);
        const targetFull = path.join(this.root, ...targetParts);
        const target = targetParts.length > 0 && this.isInsideLayer(targetParts) ? lstatSync(targetFull, { throwIfNoEntry: false }) ?? null : null;
        if (target === null || target.isDirectory()) {
          throw badEntry(what, entryName, `is a hard link to "${targetName}", which is not a file earlier in this layer`);
        }
        if (targetFull === full) return;
        await this.createReplacing(parts, full, () => linkSync(targetFull, full));
        return;
      }
      case 'symlink': {
        await this.createReplacing(parts, full, () => symlinkSync(header.linkname ?? '', full));
        this.setMetadata(full, header, true);
        this.setTimes(full, ...timesOf(header));
        return;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        const typeBits = header.type === 'fifo' ? S_IFIFO : header.type === 'block-device' ? S_IFBLK : S_IFCHR;
        const dev = header.type === 'fifo' ? 0 : makeDev(header.devmajor ?? 0, header.devminor ?? 0);
        await this.createReplacing(parts, full, () => this.options.sys.mknod(full, typeBits | mode, dev));
        this.setMetadata(full, header, false);
        this.setTimes(full, ...timesOf(header));
        return;
      }
      default:
        throw new StrataError('STRATA_UNSUPPORTED', `${what}: entry "${entryName}" has an unsupported tar entry type (${header.type === null ? 'unknown type flag, e.g. a GNU sparse or volume header' : `"${String(header.type)}"`})`);
    }
  }

  /**
   * Makes sure every parent of the entry `parts` is a real directory of this layer, creating missing ones
   * (mode 0755, root-owned, as tar does). Returns the relative path of the directory that holds the entry.
   */
  private async ensureParents(parts: string[], entryName: string): Promise<string> {
    const dirParts = parts.slice(0, -1);
    let rel = '';
    for (const part of dirParts) {
      rel = rel === '' ? part : `${rel}/${part}`;
      if (this.knownDirs.has(rel)) continue;
      const full = path.join(this.root, rel);
      const st = lstatSync(full, { throwIfNoEntry: false });
      if (st === undefined) {
        mkdirSync(full, { mode: 0o755 });
      } else if (st.isSymbolicLink()) {
        throw badEntry(this.options.what, entryName, `goes through "${rel}", a symlink (paths may not leave the layer through a symlink)`);
      } else if (!st.isDirectory()) {
        throw badEntry(this.options.what, entryName, `has parent "${rel}", which is not a directory`);
      }
      this.knownDirs.add(rel);
    }
    return rel;
  }

  /** True when every parent of a link target is a real directory of this layer (never a symlink). */
  private isInsideLayer(targetParts: string[]): boolean {
    let rel = '';
    for (const part of targetParts.slice(0, -1)) {
      rel = rel === '' ? part : `${rel}/${part}`;
      if (this.knownDirs.has(rel)) continue;
      const st = lstatSync(path.join(this.root, rel), { throwIfNoEntry: false });
      if (!st?.isDirectory()) return false;
    }
    return true;
  }

  /**
   * Runs `create`; if the name exists, removes what is there (tar semantics: a later entry wins) and runs it again.
   * Creating first and handling EEXIST saves an lstat per entry on the common path.
   */
  private async createReplacing(parts: string[], full: string, create: () => void): Promise<void> {
    try {
      create();
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      await this.removeExisting(parts, full);
      create();
    }
  }

  /** Removes what an entry replaces, forgetting directories below it. */
  private async removeExisting(parts: string[], full: string): Promise<void> {
    const st = lstatSync(full, { throwIfNoEntry: false });
    if (st === undefined) return;
    if (st.isDirectory()) {
      const rel = parts.join('/');
      for (const known of [...this.knownDirs]) if (known === rel || known.startsWith(`${rel}/`)) this.knownDirs.delete(known);
      for (const known of [...this.dirTimes.keys()]) if (known === rel || known.startsWith(`${rel}/`)) this.dirTimes.delete(known);
    }
    await rm(full, { recursive: true, force: true });
  }

  /**
   * Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears security.capability). Synchronous:
   * these calls take microseconds, and a threadpool round trip each would dominate import time.
   */
  private setMetadata(full: string, header: Headers, isSymlink: boolean): void {
    lchownSync(full, header.uid ?? 0, header.gid ?? 0);
    if (!isSymlink) chmodSync(full, (header.mode ?? 0o644) & 0o7777);
    for (const [name, value] of this.xattrsOf(header)) {
      try {
        this.options.sys.lsetxattr(full, name, value, 0);
      } catch (err) {
        // Linux refuses user.* xattrs on symlinks; like containerd, skip those instead of failing the layer.
        if (!isSymlink || !isErrno(err, 'EPERM', 'ENOTSUP', 'EOPNOTSUPP')) throw err;
        this.log.debug({ entry: header.name, xattr: name }, 'xattr not supported on a symlink; skipped');
      }
    }
  }

  /** The entry's SCHILY.xattr.* values, without overlayfs-private ones other than the opaque marker. */
  private xattrsOf(header: Headers): Array<[string, Buffer]> {
    const raw = (header.pax as Record<string, unknown> | null | undefined)?.[RAW_XATTRS] as Map<string, Buffer> | undefined;
    if (raw === undefined) return [];
    const out: Array<[string, Buffer]> = [];
    for (const [name, value] of raw) {
      // Only the opaque marker is meaningful in a layer; redirects and the like could point anywhere.
      if (name.startsWith(OVL_XATTR_PREFIX) && (name !== OVL_OPAQUE_XATTR || value.toString() !== 'y')) {
        this.log.debug({ entry: header.name, xattr: name }, 'dropping overlay-private xattr from layer');
        continue;
      }
      out.push([name, value]);
    }
    return out;
  }

  private deferDirTimes(rel: string, full: string, header: Headers): void {
    const [atime, mtime] = timesOf(header);
    this.dirTimes.set(rel, { full, depth: rel === '' ? 0 : rel.split('/').length, atime, mtime });
  }

  private setTimes(full: string, atime: TimeSpec, mtime: TimeSpec): void {
    this.options.sys.utimensat(full, atime.sec, atime.nsec, mtime.sec, mtime.nsec, true);
  }
}

function timesOf(header: Headers): [TimeSpec, TimeSpec] {
  const pax = header.pax as Record<string, string> | undefined;
  const fallbackMs = header.mtime instanceof Date ? header.mtime.getTime() : 0;
  const mtime = parsePaxTime(pax?.mtime) ?? { sec: Math.floor(fallbackMs / 1000), nsec: 0 };
  const atime = parsePaxTime(pax?.atime) ?? mtime;
  return [atime, mtime];
}

/**
 * Writes an entry's data to a new file. Not stream.pipeline(): tar-stream's entries are streamx streams, and a
 * pipeline from one that is destroyed mid-way (a truncated tar) never settles; async iteration rejects instead.
 */
export async function writeEntryData(data: AsyncIterable<Buffer>, fd: number): Promise<void> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  for await (const chunk of data) {
    pending.push(chunk);
    pendingBytes += chunk.length;
    if (pendingBytes >= 1 << 18) {
      writevAll(fd, pending);
      pending = [];
      pendingBytes = 0;
    }
  }
  if (pending.length > 0) writevAll(fd, pending);
}

/**
 * Synchronous on purpose: most layer files are small and arrive in one chunk, and a threadpool round trip per
 * file costs more than the write itself (measured with scripts/bench/import.sh).
 */
function writevAll(fd: number, buffers: Buffer[]): void {
  let rest = buffers;
  let expected = rest.reduce((n, b) => n + b.length, 0);
  while (expected > 0) {
    const written = writevSync(fd, rest);
    expected -= written;
    if (expected === 0) return;
    // Short write: drop what was written and go on with the remainder.
    let skip = written;
    const remaining: Buffer[] = [];
    for (const b of rest) {
      if (skip >= b.length) { skip -= b.length; continue; }
      remaining.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
    rest = remaining;
  }
}
