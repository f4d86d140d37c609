/**
 * The union filesystem instance (fs/overlayfs/super.c): the layer stack, the work dir, the lookup cache and
 * the operations the FUSE adapter calls. Paths are merged-view paths ("/", "/a/b"), as FUSE hands them over.
 *
 * Cache invariant: `entries` maps a merged path to how it resolves. Lower layers never change and the upper
 * layer only changes through this object, so an entry stays right until an operation here changes that
 * path or one of its ancestors; every such operation drops the affected entries (invalidatePath/Tree).
 * Dropping a directory's whole subtree costs nothing per cached entry: each entry points at the entry it was
 * looked up in (parentEntry), a dropped entry is marked stale, and a cache hit whose chain of parents holds a
 * stale entry is a miss (cachedEntry). So a rename or rmdir never scans the cache.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log.js';
import { fsError, StrataError } from '../errors.js';
import { KeyedLock } from '../util/keyed-lock.js';
import { sys, StatIndex } from '../native/index.js';
import { S_IFDIR, type Layer, type LayerPath, type UnionEntry } from './layer.js';
import { findIndexEntry } from './index.js';
import { decodeOrigin, inoFromHandle } from './origin.js';

const ZERO_UUID = Buffer.alloc(16);
/**
 * Filesystems whose FILEID_INO32_GEN handles start with the inode number (ext2/3/4, xfs), so it is read from
 * the handle without decoding it. Others (tmpfs puts the generation first) are decoded with open_by_handle_at.
 */
const INO_IN_CLEAR_FS = new Set([0xef53, 0x58465342]);
import { layerIno, lookupChild, lookupRoot, type LookupContext } from './lookup.js';
import { listMerged, type MergedEntry } from './readdir.js';
import { RealFs } from './realfs.js';
import type { RedirectMode, UnionParams } from './params.js';
import { overlayXattrs, type OverlayXattrs } from './xattrs.js';
import * as dirOps from './dir.js';
import * as inodeOps from './inode.js';
import * as fileOps from './file.js';
import * as xattrOps from './xattrs.js';
import { joinRel, O_PATH, parentPath } from './util.js';

/** Who asked: new objects belong to the calling process's fsuid/fsgid. */
export interface Caller {
  uid: number;
  gid: number;
  /** The requesting process, when the transport knows it (its supplementary groups are in /proc). */
  pid?: number;
  /**
   * The caller's umask, for a mode that arrives without it (FUSE_DONT_MASK): applied unless the parent has a
   * default ACL, which replaces it. Undefined when the mode arrives already masked (fuse-native).
   */
  umask?: number;
}

export interface StatfsResult {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

const NAME_MAX = 255;
/** Beyond this many cached resolutions the cache is dropped wholesale; re-resolving is cheap. */
const MAX_CACHED_ENTRIES = 400_000;

export class UnionFs implements LookupContext {
  readonly logger: Logger;
  readonly realfs: RealFs;
  readonly layers: readonly Layer[];
  readonly upper: Layer | undefined;
  readonly samefs: boolean;
  readonly readOnly: boolean;
  /** The private xattr names in use (userxattr picks user.overlay.*). */
  readonly xattrs: OverlayXattrs;
  /** redirect_dir: whether renaming a merged or lower dir may write a redirect, and whether lookup follows them. */
  readonly redirectMode: RedirectMode;
  readonly followRedirects: boolean;
  /** Mounted with `volatile`: nothing is fsynced (see prepareWorkDir and docs/union.md). */
  readonly volatile: boolean;
  readonly statBuf = new Float64Array(StatIndex.length);
  readonly foundStat: { real: string | undefined; readonly stat: Float64Array } = { real: undefined, stat: new Float64Array(StatIndex.length) };
  /** The kernel's layout: <workdir>/work for temporaries, <workdir>/index for the hard link index. */
  readonly workDir: string | undefined;
  readonly indexDir: string | undefined;
  readonly pendingCopyUps = new Map<string, Promise<UnionEntry>>();
  /** Merged paths held by a running change (see withNames). */
  private readonly nameLocks = new KeyedLock();
  /** Read-only opens of lower objects, by FUSE handle (see file.ts currentReadFd). */
  readonly lowerReaders = new Map<number, fileOps.LowerReader>();

  /**
   * Set by a transport whose kernel caches attributes: called after the union changed what `path` reports
   * without being asked to (a copy-up turns a lower directory into a merged one, whose nlink is 1).
   */
  attrsChanged: ((path: string) => void) | undefined;

  private readonly entries = new Map<string, UnionEntry>();
  /** Paths of cached lower hard links (lowerNlink > 1): invalidateHardLinkAliases drops them without a scan. */
  private readonly hardLinkAliases = new Set<string>();
  private readonly fsUuids = new Map<number, Buffer | null>();
  private readonly rootFds = new Map<number, number>();
  private readonly originLayers = new Map<string, Layer | undefined>();
  private readonly fsTypes = new Map<number, number>();
  private readonly nullUuid: boolean;
  private tempCounter = 0;

  constructor(params: UnionParams, logger: Logger) {
    this.logger = logger;
    this.realfs = new RealFs(logger.child({ component: 'realfs' }));
    const roots: Array<{ root: string; isUpper: boolean }> = [];
    if (params.upperDir !== undefined) roots.push({ root: params.upperDir, isUpper: true });
    for (const lower of params.lowerDirs) roots.push({ root: lower, isUpper: false });
    const devs: number[] = [];
    this.layers = roots.map(({ root, isUpper }, index) => {
      const dev = fs.statSync(root).dev;
      if (!devs.includes(dev)) devs.push(dev);
      return { index, root, isUpper, dev, fsIndex: devs.indexOf(dev) };
    });
    this.upper = this.layers[0]?.isUpper ? this.layers[0] : undefined;
    this.samefs = devs.length === 1;
    this.readOnly = params.readOnly || this.upper === undefined;
    this.volatile = params.volatile && !this.readOnly;
    this.workDir = params.workDir === undefined ? undefined : path.join(params.workDir, 'work');
    // index=off: lower hard links are copied up per name and an existing index is left alone, as the kernel does.
    this.indexDir = params.workDir === undefined || !params.index ? undefined : path.join(params.workDir, 'index');
    this.xattrs = overlayXattrs(params.userxattr);
    this.redirectMode = params.redirectDir;
    this.followRedirects = params.redirectDir !== 'nofollow';
    this.nullUuid = params.nullUuid;
  }

  /**
   * Prepares <workdir>/work the way the kernel does at mount: whatever an earlier mount left there (temps
   * of an interrupted copy-up, removed directories) is garbage and is deleted.
   */
  prepareWorkDir(options: { resuming?: boolean } = {}): void {
    if (!this.workDir || this.readOnly) return;
    // A server taking over a live connection of its own mount (a restart, see lib/fuse/kernel/journal.ts)
    // finds that mount's volatile marker: that is not an earlier mount's.
    if (options.resuming !== true) this.refuseIncompatFeatures();
    // fd-based: a dir removed through a deep merged path was moved here whole, so work/ can be deeper than PATH_MAX.
    sys.removeTree(this.workDir);
    fs.mkdirSync(this.workDir, { mode: 0 });
    fs.chmodSync(this.workDir, 0);
    if (this.volatile) {
      // The kernel's marker of a volatile mount: it outlives the unmount on purpose, because nothing was
      // synced and only the user knows whether the machine crashed since. Any later mount refuses this upper
      // until the user removes the marker (or starts afresh), so Strata and the kernel agree on the same dirs.
      fs.mkdirSync(path.join(this.workDir, 'incompat', 'volatile', 'dirty'), { recursive: true });
    }
    // The index is kept across mounts (it is what keeps lower hard links together), as the kernel keeps it.
    if (this.indexDir && !fs.existsSync(this.indexDir)) fs.mkdirSync(this.indexDir, { mode: 0 });
  }

  /**
   * Kernel overlayfs refuses a workdir whose work/incompat holds anything (today only `volatile`, left by a
   * volatile mount): the upper may have lost writes in a crash. Checked before work/ is wiped, or the wipe
   * would hide it.
   */
  private refuseIncompatFeatures(): void {
    if (!this.workDir) return;
    const incompat = path.join(this.workDir, 'incompat');
    let features: string[];
    try {
      features = fs.readdirSync(incompat);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const feature = features[0];
    if (feature === undefined) return;
    const hint =
      feature === 'volatile'
        ? `an earlier mount with "volatile" did not sync the upper: if the machine has not crashed since, remove ${path.join(incompat, feature)} and mount again; otherwise start from an empty upperdir and workdir`
        : 'this feature is unknown to strata-overlay';
    throw new StrataError('STRATA_BAD_DIR', `workdir "${path.dirname(this.workDir)}" holds the incompatible feature "${feature}" (${incompat}): ${hint}`);
  }

  findIndexEntry(lower: LayerPath): string | undefined {
    return this.readOnly ? undefined : findIndexEntry(this, lower);
  }

  /**
   * The inode number a copied-up object reports: its origin's, with the origin layer's filesystem bits, as
   * kernel overlayfs keeps st_ino across copy-up (on one filesystem, and across several as with xino), so it
   * also survives a remount. Undefined when the copy's own number must be used: the origin is on no lower
   * layer (foreign or ambiguous uuid), cannot be decoded any more, or (for a non-dir) had several links and
   * this copy is not the indexed one, since two separate copies of one lower hard link must not share it.
   */
  originIno(upperReal: string, fb: Buffer, isDir: boolean): number | undefined {
    const origin = decodeOrigin(fb);
    if (!origin) return undefined;
    const layer = this.originLayer(origin.uuid);
    if (!layer) return undefined;
    let ino = INO_IN_CLEAR_FS.has(this.fsTypeOf(layer)) ? inoFromHandle(origin) : undefined;
    const needNlink = !isDir && !this.isIndexedCopy(upperReal, fb);
    if (ino === undefined || needNlink) {
      let fd: number | undefined;
      try {
        fd = sys.openByHandle(this.layerRootFd(layer), origin.type, origin.handle, O_PATH);
        if (sys.fstatRaw(fd, this.statBuf) < 0) return undefined;
        if (needNlink && this.statBuf[StatIndex.nlink] !== 1) return undefined;
        ino = this.statBuf[StatIndex.ino] ?? 0;
      } catch {
        return undefined; // the origin is gone (ESTALE) or cannot be decoded here
      } finally {
        if (fd !== undefined) fs.closeSync(fd);
      }
    }
    return layerIno(this, layer, ino);
  }

  /** True when the upper non-dir at `upperReal` is the inode the hard link index holds for `fb`. */
  private isIndexedCopy(upperReal: string, fb: Buffer): boolean {
    if (!this.indexDir || sys.lstatRaw(upperReal, this.statBuf) < 0) return false;
    const ino = this.statBuf[StatIndex.ino];
    return sys.lstatRaw(`${this.indexDir}/${fb.toString('hex')}`, this.statBuf) === 0 && this.statBuf[StatIndex.ino] === ino;
  }

  /**
   * The topmost lower layer on the filesystem an origin's uuid names. Layers whose filesystems share a
   * uuid (none at all, say) cannot be told apart: then, as the kernel does, the origin is not used.
   */
  private originLayer(uuid: Buffer): Layer | undefined {
    const key = uuid.toString('hex');
    if (this.originLayers.has(key)) return this.originLayers.get(key);
    let found: Layer | undefined;
    let ambiguous = false;
    for (const layer of this.layers) {
      if (layer.isUpper) continue;
      const layerUuid = this.fsUuidOf(layer) ?? ZERO_UUID;
      if (!layerUuid.subarray(0, 16).equals(uuid)) continue;
      if (found === undefined) found = layer;
      else if (found.fsIndex !== layer.fsIndex) ambiguous = true;
    }
    const result = ambiguous ? undefined : found;
    this.originLayers.set(key, result);
    return result;
  }

  private fsTypeOf(layer: Layer): number {
    let type = this.fsTypes.get(layer.dev);
    if (type === undefined) {
      type = Number(fs.statfsSync(layer.root).type);
      this.fsTypes.set(layer.dev, type);
    }
    return type;
  }

  /** An open fd on a layer's root, the mount fd open_by_handle_at needs. Kept for the mount's lifetime. */
  private layerRootFd(layer: Layer): number {
    let fd = this.rootFds.get(layer.index);
    if (fd === undefined) {
      fd = fs.openSync(layer.root, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      this.rootFds.set(layer.index, fd);
    }
    return fd;
  }

  /** The real object holding the data and attributes of `entry` (its index entry, for indexed lower links). */
  dataReal(entry: UnionEntry): string {
    return entry.indexReal ?? entry.top.real;
  }

  /** Drops cached lower hard links, whose index entry may have just been created. */
  invalidateHardLinkAliases(): void {
    for (const p of this.hardLinkAliases) this.invalidatePath(p);
    this.hardLinkAliases.clear();
  }

  // --- lookup and cache -------------------------------------------------------------------------------

  lookup(p: string): UnionEntry {
    const entry = this.lookupIfExists(p);
    if (!entry) throw fsError('ENOENT', p);
    return entry;
  }

  /**
   * As lookup, but a missing last name gives undefined instead of throwing ENOENT (a missing ancestor still
   * throws). Negative lookups are common (every create is preceded by one), and an error's stack trace costs
   * more than the lookup itself.
   */
  lookupIfExists(p: string): UnionEntry | undefined {
    const cached = this.cachedEntry(p);
    if (cached) return cached;
    if (p === '/' || p === '') {
      const root = lookupRoot(this);
      this.cacheEntry(root);
      return root;
    }
    const slash = p.lastIndexOf('/');
    const parent = this.lookup(slash <= 0 ? '/' : p.slice(0, slash));
    return this.lookupChildCached(parent, p.slice(slash + 1));
  }

  lookupDir(p: string): UnionEntry {
    const entry = this.lookup(p);
    if (entry.type !== S_IFDIR) throw fsError('ENOTDIR', p);
    return entry;
  }

  lookupChildCached(parent: UnionEntry, name: string): UnionEntry | undefined {
    const childPath = joinRel(parent.path, name);
    const cached = this.cachedEntry(childPath);
    if (cached) return cached;
    this.checkName(name);
    const entry = lookupChild(this, parent, name);
    if (entry) {
      entry.parentEntry = parent;
      this.cacheEntry(entry);
    }
    return entry;
  }

  /** The cached entry at `p`, unless it or a directory it was looked up through was dropped since. */
  private cachedEntry(p: string): UnionEntry | undefined {
    const cached = this.entries.get(p);
    if (cached === undefined) return undefined;
    for (let e = cached.parentEntry; e !== undefined; e = e.parentEntry) {
      if (e.stale === true) {
        this.entries.delete(p);
        return undefined;
      }
    }
    return cached;
  }

  cacheEntry(entry: UnionEntry): void {
    if (this.entries.size >= MAX_CACHED_ENTRIES) {
      for (const old of this.entries.values()) old.stale = true;
      this.entries.clear();
      this.hardLinkAliases.clear();
    }
    // A replaced entry (a copied-up directory, say) is stale for whatever was looked up through it.
    const replaced = this.entries.get(entry.path);
    if (replaced !== undefined && replaced !== entry) replaced.stale = true;
    this.entries.set(entry.path, entry);
    if ((entry.lowerNlink ?? 1) > 1) this.hardLinkAliases.add(entry.path);
  }

  invalidatePath(p: string): void {
    const entry = this.entries.get(p);
    if (entry === undefined) return;
    entry.stale = true;
    this.entries.delete(p);
  }

  /**
   * Drops `p` and everything below it (after a directory moved or went away): everything below was looked up
   * through p's entry, which is now stale (see the cache invariant).
   */
  invalidateTree(p: string): void {
    this.invalidatePath(p);
  }

  // --- helpers for the operation modules ----------------------------------------------------------------

  checkName(name: string): void {
    if (name.length > NAME_MAX / 4 && Buffer.byteLength(name) > NAME_MAX) throw fsError('ENAMETOOLONG', name);
  }

  assertWritable(p: string): void {
    if (this.readOnly) throw fsError('EROFS', p);
  }

  upperReal(p: string): string {
    if (!this.upper) throw fsError('EROFS', p);
    return p === '/' ? this.upper.root : this.upper.root + p;
  }

  /** A fresh name in the work dir, in the kernel's style ("#<hex>"). */
  workTemp(): string {
    if (!this.workDir) throw fsError('EROFS', 'no work dir');
    this.tempCounter += 1;
    return `${this.workDir}/#${this.tempCounter.toString(16)}`;
  }

  /** The uuid recorded in origins of objects from `layer`: its filesystem's, or none with uuid=null/off. */
  fsUuidOf(layer: Layer): Buffer | null {
    if (this.nullUuid) return null;
    if (!this.fsUuids.has(layer.dev)) {
      let uuid: Buffer | null = null;
      try {
        uuid = sys.getFsUuid(layer.root);
      } catch {
        uuid = null;
      }
      this.fsUuids.set(layer.dev, uuid);
    }
    return this.fsUuids.get(layer.dev) ?? null;
  }

  /**
   * Runs a change holding merged paths, so no other change of those paths interleaves with it. The union is
   * path-based and a change spans awaits (copy-up): it resolves a name, copies up, then acts on the real path.
   * Without this an open for writing could resolve a name to its upper file, and an unlink of that name could
   * put a whiteout there before the open reached the real path (ENXIO from the 0/0 device), or a copy-up could
   * land after the unlink's whiteout (EEXIST). The kernel excludes these with the parent's i_rwsem (create,
   * unlink, rename, link) and the inode lock (setattr, the victim of unlink/rmdir/rename); kernel overlayfs
   * also opens the real object it resolved, never a name again. Here a name change holds its parent's path
   * and its own (as i_rwsem plus the victim's lock), an attribute change or a write-open holds the object's.
   * Reads resolve and act without awaiting, so they need nothing. Copy-up takes no lock: it only waits for
   * other copy-ups, so a holder never waits for a path it does not hold first.
   */
  private withNames<T>(paths: readonly string[], work: () => Promise<T>): Promise<T> {
    return this.nameLocks.withLocks(paths, work);
  }

  // --- operations -----------------------------------------------------------------------------------------

  getattr(p: string, out: Float64Array): void {
    if (!inodeOps.getattrIfExists(this, p, out)) throw fsError('ENOENT', p);
  }

  /** As getattr, but false (nothing thrown) when the last name of `p` does not exist. */
  getattrIfExists(p: string, out: Float64Array): boolean {
    return inodeOps.getattrIfExists(this, p, out);
  }

  /** getattr on an open file; `p` is empty when the file was unlinked while open. */
  fgetattr(p: string, fd: number, out: Float64Array): void {
    if (p) inodeOps.getattr(this, p, out);
    else inodeOps.getattrByFd(fd, out);
  }

  readdir(p: string): { entries: MergedEntry[]; dirIno: number; parentIno: number } {
    const dir = this.lookupDir(p);
    const entries = listMerged(this, dir, (parent, name) => this.lookupChildCached(parent, name));
    const parentIno = p === '/' ? dir.ino : this.lookup(path.posix.dirname(p)).ino;
    return { entries, dirIno: dir.ino, parentIno };
  }

  readlink(p: string): string {
    return inodeOps.readlink(this, p);
  }

  open(p: string, flags: number): Promise<number> {
    if (!fileOps.isWriteOpen(flags)) return fileOps.open(this, p, flags);
    return this.withNames([p], () => fileOps.open(this, p, flags));
  }

  read(p: string, fd: number, buffer: Buffer, length: number, position: number): number {
    return fileOps.read(fileOps.currentReadFd(this, p, fd), buffer, length, position);
  }

  write(fd: number, buffer: Buffer, length: number, position: number): number {
    return fileOps.write(fd, buffer, length, position);
  }

  /** True when the write is already in the file (a write resent after a restart: see fileOps.holdsAlready). */
  holdsAlready(fd: number, buffer: Buffer, length: number, position: number): boolean {
    return fileOps.holdsAlready(fd, buffer, length, position);
  }

  /** True when `fd` (a FUSE handle) is a read-only open of a lower object. */
  isLowerReader(fd: number): boolean {
    return this.lowerReaders.has(fd);
  }

  release(fd: number): void {
    fileOps.release(this, fd);
  }

  fsync(fd: number, dataOnly: boolean): void {
    // volatile: as on the kernel's volatile mounts, a user's fsync/fdatasync reaches no disk.
    if (this.volatile) return;
    fileOps.fsync(fd, dataOnly);
  }

  /**
   * fsync of a merged directory, as ovl_dir_fsync does it: the real upper dir is synced (that is where the
   * directory's changes live); a directory only in lower layers has nothing of ours to sync.
   */
  fsyncdir(p: string, dataOnly: boolean): void {
    if (this.volatile) return;
    const entry = this.lookup(p);
    if (entry.inUpper) this.realfs.fsyncDir(entry.top.real, dataOnly);
  }

  /**
   * fallocate on an open file (ovl_fallocate): the fd was opened for writing, so the file is in the upper
   * layer already; every mode goes to the upper filesystem, which answers EOPNOTSUPP for those it lacks.
   */
  fallocate(fd: number, mode: number, offset: number, length: number): void {
    if (this.readOnly) throw fsError('EROFS', `fd ${fd}`);
    if (this.isLowerReader(fd)) throw fsError('EBADF', `fd ${fd} is open read-only`);
    sys.fallocate(fd, mode, offset, length);
  }

  ftruncate(fd: number, size: number): void {
    fileOps.ftruncate(fd, size);
  }

  create(p: string, mode: number, flags: number, caller: Caller): Promise<number> {
    this.assertWritable(p);
    return this.withNames(nameChange(p), () => dirOps.create(this, p, mode, flags, caller));
  }

  mkdir(p: string, mode: number, caller: Caller): Promise<void> {
    this.assertWritable(p);
    return this.withNames(nameChange(p), () => dirOps.mkdir(this, p, mode, caller));
  }

  mknod(p: string, mode: number, dev: number, caller: Caller): Promise<void> {
    this.assertWritable(p);
    return this.withNames(nameChange(p), () => dirOps.mknod(this, p, mode, dev, caller));
  }

  symlink(target: string, p: string, caller: Caller): Promise<void> {
    this.assertWritable(p);
    return this.withNames(nameChange(p), () => dirOps.symlink(this, target, p, caller));
  }

  link(existing: string, p: string): Promise<void> {
    this.assertWritable(p);
    return this.withNames([existing, ...nameChange(p)], () => dirOps.link(this, existing, p));
  }

  unlink(p: string): Promise<void> {
    return this.withNames(nameChange(p), () => dirOps.unlink(this, p));
  }

  rmdir(p: string): Promise<void> {
    return this.withNames(nameChange(p), () => dirOps.rmdir(this, p));
  }

  /** renameat2(RENAME_EXCHANGE) of two names of the merged view. */
  exchange(a: string, b: string): Promise<void> {
    return this.withNames([...nameChange(a), ...nameChange(b)], () => dirOps.exchange(this, a, b));
  }

  rename(from: string, to: string): Promise<void> {
    return this.withNames([...nameChange(from), ...nameChange(to)], () => dirOps.rename(this, from, to));
  }

  chmod(p: string, mode: number): Promise<void> {
    this.assertWritable(p);
    return this.withNames([p], () => inodeOps.chmod(this, p, mode));
  }

  chown(p: string, uid: number, gid: number): Promise<void> {
    this.assertWritable(p);
    return this.withNames([p], () => inodeOps.chown(this, p, uid, gid));
  }

  utimens(p: string, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): Promise<void> {
    this.assertWritable(p);
    return this.withNames([p], () => inodeOps.utimens(this, p, atimeSec, atimeNsec, mtimeSec, mtimeNsec));
  }

  truncate(p: string, size: number): Promise<void> {
    this.assertWritable(p);
    return this.withNames([p], () => inodeOps.truncate(this, p, size));
  }

  getxattr(p: string, name: string): Buffer {
    return xattrOps.getXattr(this, p, name);
  }

  /** As getxattr, but null (nothing thrown) for an attribute that is not set. */
  getxattrIfExists(p: string, name: string): Buffer | null {
    return xattrOps.getXattrIfExists(this, p, name);
  }

  listxattr(p: string): string[] {
    return xattrOps.listXattrs(this, p);
  }

  /** `caller` (default: root) matters for POSIX ACLs: see xattrs.ts setXattr. */
  setxattr(p: string, name: string, value: Buffer, flags: number, caller?: Caller): Promise<void> {
    return this.withNames([p], () => xattrOps.setXattr(this, p, name, value, flags, caller));
  }

  removexattr(p: string, name: string): Promise<void> {
    return this.withNames([p], () => xattrOps.removeXattr(this, p, name));
  }

  statfs(): StatfsResult {
    const root = (this.upper ?? this.layers[0])?.root;
    if (!root) throw fsError('EIO', 'no layers');
    const s = fs.statfsSync(root);
    return {
      bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail,
      files: s.files, ffree: s.ffree, favail: s.ffree, fsid: 0, flag: this.readOnly ? 1 : 0, namemax: NAME_MAX,
    };
  }
}

/** The paths a change of the name `p` holds: its parent directory's (the kernel's i_rwsem) and its own. */
function nameChange(p: string): string[] {
  return [parentPath(p), p];
}
