/**
 * The layer store: each layer's content extracted once (by diffID) under <root>/layers/<dirName>, and its
 * metadata in LevelDB (chain records, content records, references).
 *
 * Lifecycle of an import (crash-safe; kill -9 at any point leaves the whole layer or nothing):
 *  1. stage:  extract into <root>/layer-tmp/<stagingName>, verify digests, syncfs;
 *  2. commit: one batch() writes the content record (with stagingName), the chain records and whatever the caller
 *             adds (an image record, references);
 *  3. rename: <root>/layer-tmp/<stagingName> -> <root>/layers/<dirName>, fsync <root>/layers, clear stagingName.
 * recover() (run by open()) finishes step 3 for committed records, drops records whose content is gone, deletes
 * every staged dir (never committed: the user's source still has the data) and moves every content dir without a
 * record to <root>/lost+found (a record lost to a damaged log must not cost the data).
 * Removal is the reverse: one batch() deletes the records, then the dir is renamed into layer-tmp and deleted.
 *
 * References: a holder (`image:<id>`, `mount:<name>`) that acquires a chainID holds every layer of that chain.
 * The `refs` sublevel is derived data: image and mount records name the layers they use, and
 * rebuildReferences() (daemon start-up, fsck --repair) makes the image:/mount: refs match them again. A layer
 * with holders, child layers, or an image or mount record naming it cannot be removed (STRATA_IN_USE, naming
 * them), whatever the refs say.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { StrataError, isErrno } from '../errors.js';
import type { Logger } from '../log.js';
import type { StrataSys } from '../native/index.js';
import { LostAndFound, fsyncDir } from '../store/lost-found.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import { applyLayerTar } from './apply-tar.js';
import { decompressor, detectCompression, type Compression } from './compression.js';
import { HashingStream, chainIdOf, hexOf, type Digest } from './digest.js';
import type { LayerContentRecord, LayerInfo, LayerRecord, LayerRefRecord, ProgressListener } from './types.js';
import { Lock } from '../util/keyed-lock.js';
import { fsckLayerStore, recoverLayerStore, splitRefKey, type FsckProblem, type RecoveryReport, type RecoveryView } from './recovery.js';

export type { FsckProblem, RecoveryReport } from './recovery.js';

export const LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
]);

export interface LayerStoreLimits {
  /** Largest single tar entry accepted. */
  maxEntryBytes: number;
  /** Largest blob (as stored, compressed or not) and largest uncompressed tar accepted. */
  maxBlobBytes: number;
  maxTarBytes: number;
}

export const DEFAULT_LIMITS: LayerStoreLimits = {
  maxEntryBytes: 64 * 2 ** 30,
  maxBlobBytes: 256 * 2 ** 30,
  maxTarBytes: 512 * 2 ** 30,
};

/** Shortest dirName; longer only when two diffIDs share the prefix. 12 hex chars keep a 128-layer lowerdir short. */
const DIR_NAME_LENGTH = 12;

export interface StageOptions {
  /** Names the input in errors and logs. */
  what: string;
  mediaType?: string;
  /** When given, the blob must have this digest (STRATA_DIGEST_MISMATCH otherwise). */
  expectDigest?: Digest;
  /** When given, the uncompressed tar must have this diffID. */
  expectDiffID?: Digest;
  /** When given, the blob must have exactly this many bytes. */
  expectSize?: number;
  onProgress?: (bytes: number) => void;
}

/** A layer extracted and verified in layer-tmp, not yet committed. */
export interface StagedLayer {
  stagingName: string;
  diffID: Digest;
  compressedDigest: Digest;
  compressedSize: number;
  size: number;
  entries: number;
  mediaType: string;
}

/** What rebuildReferences() changed: `<chainID>|<holder>` keys. */
export interface ReferenceRepair {
  added: string[];
  removed: string[];
}

/** Holders whose references are rebuilt from records; any other holder kind is left as it is. */
const RECORDED_HOLDER = /^(image|mount):/;

/** One layer to commit: either newly staged content, or a diffID whose content the store already holds. */
export type CommitItem = { staged: StagedLayer } | { existingDiffID: Digest };

export class LayerStore {
  readonly layersDir: string;
  readonly tmpDir: string;
  private readonly log: Logger;
  private readonly limits: LayerStoreLimits;
  private readonly lostAndFound: LostAndFound;
  private sysModule: StrataSys | null = null;
  /** Serialises commits and removals, which read-then-write the metastore. */
  private readonly writeLock = new Lock();

  constructor(
    private readonly metastore: Metastore,
    readonly rootDir: string,
    logger: Logger,
    limits: Partial<LayerStoreLimits> = {},
    lostAndFound?: LostAndFound,
  ) {
    this.layersDir = path.join(rootDir, 'layers');
    this.tmpDir = path.join(rootDir, 'layer-tmp');
    this.log = logger.child({ component: 'layers' });
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.lostAndFound = lostAndFound ?? new LostAndFound(rootDir, logger);
  }

  /** Creates the store dirs and cleans up after any crash (see recover()). Call once before use. */
  async open(): Promise<RecoveryReport> {
    await mkdir(this.layersDir, { recursive: true, mode: 0o700 });
    await mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
    return this.recover();
  }

  // ---------------------------------------------------------------- import

  /** Imports one layer tar (plain, gzip or zstd) on top of `parent` (a chainID) or as a bottom layer. */
  async importTarFile(file: string, options: { parent?: Digest | null; mediaType?: string; onProgress?: ProgressListener } = {}): Promise<LayerInfo> {
    const st = await statOrThrow(file);
    if (!st.isFile()) throw new StrataError('STRATA_BAD_ARCHIVE', `${file} is not a regular file`);
    const parent = options.parent ?? null;
    if (parent !== null) await this.getRecord(parent);
    const staged = await this.stageTarFile(file, {
      what: file,
      mediaType: options.mediaType,
      onProgress: (bytes) => options.onProgress?.({ layer: 1, layers: 1, bytes, totalBytes: st.size }),
    });
    const [chainID] = await this.commit(parent, [{ staged }]);
    return this.inspect(chainID!);
  }

  /**
   * Imports a directory as a layer. It is read as a layer in overlayfs format (a char device 0/0 is a whiteout,
   * trusted.overlay.opaque=y an opaque dir), through GNU tar so the diffID is that of a reproducible POSIX tar.
   */
  async importDirectory(dir: string, options: { parent?: Digest | null; onProgress?: ProgressListener } = {}): Promise<LayerInfo> {
    const st = await statOrThrow(dir);
    if (!st.isDirectory()) throw new StrataError('STRATA_BAD_DIR', `${dir} is not a directory`);
    const parent = options.parent ?? null;
    if (parent !== null) await this.getRecord(parent);
    const tar = spawn('tar', [
      '--create', '--format=posix', '--pax-option=delete=atime,delete=ctime', '--sort=name', '--numeric-owner',
      '--xattrs', '--xattrs-include=*', '--one-file-system', '--file=-', '--directory', dir, '.',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let tarErrors = '';
    tar.stderr.setEncoding('utf8').on('data', (s: string) => { tarErrors += s; });
    const exited = new Promise<number>((resolve) => tar.on('close', (code) => resolve(code ?? 1)));
    // Read at once: Node drains (and drops) a child's unread stdout when the child exits.
    const tarOut = tar.stdout.pipe(new PassThrough({ highWaterMark: 1 << 20 }));
    let staged: StagedLayer;
    try {
      staged = await this.stage(tarOut, 'none', {
        what: dir,
        mediaType: 'application/vnd.oci.image.layer.v1.tar',
        onProgress: (bytes) => options.onProgress?.({ layer: 1, layers: 1, bytes, totalBytes: null }),
      });
    } catch (err) {
      tar.kill('SIGKILL');
      throw err;
    }
    const code = await exited;
    if (code !== 0) {
      await this.discard(staged);
      throw new StrataError('STRATA_BAD_DIR', `cannot read ${dir}: ${tarErrors.trim() || `tar exited ${code}`}`);
    }
    const [chainID] = await this.commit(parent, [{ staged }]);
    return this.inspect(chainID!);
  }

  /** Extracts and verifies a layer blob into layer-tmp. The caller commits or discards the result. */
  async stageTarFile(file: string, options: StageOptions): Promise<StagedLayer> {
    const compression = await detectCompression(file);
    if (options.expectSize !== undefined) {
      const st = await statOrThrow(file);
      if (st.size !== options.expectSize) {
        throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: blob has ${st.size} bytes, its descriptor says ${options.expectSize}`);
      }
    }
    return this.stage(createReadStream(file, { highWaterMark: 1 << 20 }), compression, options);
  }

  /** Extracts and verifies an uncompressed layer tar read from a stream (a commit's output) into layer-tmp. */
  async stageStream(source: Readable, options: StageOptions): Promise<StagedLayer> {
    return this.stage(source, 'none', options);
  }

  private async stage(source: Readable, compression: Compression, options: StageOptions): Promise<StagedLayer> {
    const mediaType = options.mediaType ?? mediaTypeFor(compression);
    if (!LAYER_MEDIA_TYPES.has(mediaType)) {
      source.destroy();
      throw new StrataError('STRATA_UNSUPPORTED', `${options.what}: unsupported layer media type "${mediaType}"`);
    }
    const sys = await this.native();
    const stagingName = `stage-${randomBytes(6).toString('hex')}`;
    const stagingDir = path.join(this.tmpDir, stagingName);
    await mkdir(stagingDir, { mode: 0o755 });
    try {
      const blobHash = new HashingStream(this.limits.maxBlobBytes, `${options.what}`);
      const tarHash = new HashingStream(this.limits.maxTarBytes, `${options.what} (uncompressed)`);
      if (options.onProgress) {
        const report = options.onProgress;
        blobHash.on('data', () => report(blobHash.bytes));
      }
      const decoder = decompressor(compression, options.what);
      const result = await applyLayerTar(source, [blobHash, decoder.stream, tarHash], stagingDir, {
        what: options.what,
        maxEntryBytes: this.limits.maxEntryBytes,
        logger: this.log,
        sys,
      });
      await decoder.checked;
      if (tarHash.bytes === 0) throw new StrataError('STRATA_BAD_ARCHIVE', `${options.what} is empty, not a tar`);
      if (options.expectDigest !== undefined && blobHash.digest !== options.expectDigest) {
        throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: blob digest is ${blobHash.digest}, expected ${options.expectDigest}`);
      }
      if (options.expectDiffID !== undefined && tarHash.digest !== options.expectDiffID) {
        throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: uncompressed tar has diffID ${tarHash.digest}, the image config says ${options.expectDiffID}`);
      }
      await syncFilesystem(stagingDir);
      const staged: StagedLayer = {
        stagingName,
        diffID: tarHash.digest,
        compressedDigest: blobHash.digest,
        compressedSize: blobHash.bytes,
        size: result.contentBytes,
        entries: result.entries,
        mediaType,
      };
      this.log.debug({ what: options.what, diffID: staged.diffID, entries: staged.entries }, 'staged layer');
      return staged;
    } catch (err) {
      await rm(stagingDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Deletes a staged layer that will not be committed. */
  async discard(staged: StagedLayer): Promise<void> {
    await rm(path.join(this.tmpDir, staged.stagingName), { recursive: true, force: true });
  }

  /**
   * Commits a stack of layers on top of `parent` in one batch together with `extraOps(chainIDs)` (an image
   * record, references), then moves new content into place. Returns the chainIDs, bottom first.
   * Staged content whose diffID the store already holds is discarded: each diffID is stored once.
   */
  async commit(parent: Digest | null, items: readonly CommitItem[], extraOps?: (chainIDs: Digest[]) => BatchOp[]): Promise<Digest[]> {
    return this.exclusive(async () => {
      const ops: BatchOp[] = [];
      const now = new Date().toISOString();
      const toRename: LayerContentRecord[] = [];
      const toDiscard: StagedLayer[] = [];
      const contentsInBatch = new Map<Digest, LayerContentRecord>();
      const usedDirNames = new Set((await this.allContents()).map((c) => c.dirName));
      const chainIDs: Digest[] = [];
      let below = parent;
      let depth = parent === null ? 0 : (await this.getRecord(parent)).depth;
      for (const item of items) {
        const diffID = 'staged' in item ? item.staged.diffID : item.existingDiffID;
        const existing = contentsInBatch.get(diffID) ?? (await this.metastore.get<LayerContentRecord>('layerContents', diffID));
        if ('staged' in item && existing !== undefined) toDiscard.push(item.staged);
        if (existing === undefined) {
          if (!('staged' in item)) throw new StrataError('STRATA_NOT_FOUND', `layer content ${diffID} is not in the store`);
          const s = item.staged;
          const content: LayerContentRecord = {
            diffID, dirName: uniqueDirName(diffID, usedDirNames), size: s.size, entries: s.entries,
            compressedDigest: s.compressedDigest, compressedSize: s.compressedSize, mediaType: s.mediaType,
            createdAt: now, stagingName: s.stagingName,
          };
          usedDirNames.add(content.dirName);
          contentsInBatch.set(diffID, content);
          toRename.push(content);
          ops.push({ type: 'put', sublevel: 'layerContents', key: diffID, value: content });
        }
        const chainID = chainIdOf(below, diffID);
        depth += 1;
        if ((await this.metastore.get<LayerRecord>('layers', chainID)) === undefined) {
          const record: LayerRecord = { chainID, diffID, parent: below, depth, createdAt: now };
          ops.push({ type: 'put', sublevel: 'layers', key: chainID, value: record });
        }
        chainIDs.push(chainID);
        below = chainID;
      }
      if (extraOps) ops.push(...extraOps(chainIDs));
      await this.metastore.batch(ops);
      await this.moveIntoPlace(toRename);
      for (const s of toDiscard) await this.discard(s);
      this.log.info({ chainIDs, newContents: toRename.length }, 'committed layers');
      return chainIDs;
    });
  }

  /** Step 3 of an import: rename staged dirs into place, make the renames durable, then clear stagingName. */
  private async moveIntoPlace(contents: readonly LayerContentRecord[]): Promise<void> {
    if (contents.length === 0) return;
    for (const c of contents) {
      await rename(path.join(this.tmpDir, c.stagingName!), path.join(this.layersDir, c.dirName));
    }
    await fsyncDir(this.layersDir);
    await fsyncDir(this.tmpDir);
    // The import is committed and in place: a stale stagingName only means recover() (or fsck --repair) clears it
    // later, so a store that cannot take this write must not turn a committed import into a reported failure.
    await this.metastore.batch(contents.map((c) => {
      const { stagingName: _done, ...placed } = c;
      return { type: 'put' as const, sublevel: 'layerContents' as const, key: c.diffID, value: placed };
    })).catch((err: unknown) => {
      this.log.warn({ err, diffIDs: contents.map((c) => c.diffID) }, 'could not clear stagingName after moving layers into place; start-up will');
    });
  }

  // ---------------------------------------------------------------- queries

  /** Resolves a chainID, "sha256:<prefix>" or a hex prefix (at least 4 chars) to one layer's chainID. */
  async resolve(ref: string): Promise<Digest> {
    const hex = ref.startsWith('sha256:') ? ref.slice(7) : ref;
    if (!/^[0-9a-f]{4,64}$/.test(hex)) throw new StrataError('STRATA_BAD_OPTION', `"${ref}" is not a layer id (a chainID or a prefix of at least 4 hex digits)`);
    const matches = (await this.metastore.entries<LayerRecord>('layers', `sha256:${hex}`)).map(([key]) => key as Digest);
    if (matches.length === 0) throw new StrataError('STRATA_NOT_FOUND', `no layer ${ref}`);
    if (matches.length > 1) throw new StrataError('STRATA_BAD_OPTION', `layer id ${ref} is ambiguous (${matches.length} layers match)`);
    return matches[0]!;
  }

  async has(chainID: Digest): Promise<boolean> {
    return (await this.metastore.get<LayerRecord>('layers', chainID)) !== undefined;
  }

  async hasContent(diffID: Digest): Promise<boolean> {
    return (await this.metastore.get<LayerContentRecord>('layerContents', diffID)) !== undefined;
  }

  async getRecord(chainID: Digest): Promise<LayerRecord> {
    const record = await this.metastore.get<LayerRecord>('layers', chainID);
    if (record === undefined) throw new StrataError('STRATA_NOT_FOUND', `no layer ${chainID}`);
    return record;
  }

  /** The chain ending at `chainID`, top layer first. */
  async chain(chainID: Digest): Promise<LayerRecord[]> {
    const out: LayerRecord[] = [];
    let next: Digest | null = chainID;
    while (next !== null) {
      const record: LayerRecord = await this.getRecord(next);
      out.push(record);
      next = record.parent;
    }
    return out;
  }

  /** Absolute content dirs of the chain ending at `chainID`, top layer first, as overlayfs `lowerdir=` wants them. */
  async lowerDirs(chainID: Digest): Promise<string[]> {
    const spec = await this.lowerDirSpec(chainID);
    return spec.names.map((name) => path.join(spec.cwd, name));
  }

  /**
   * The same stack as short names relative to `cwd` (<root>/layers). Mount with the mount process's working
   * directory set to `cwd` and `lowerdir=` set to `lowerdir`: the kernel reads mount options from one page
   * (4096 bytes), and 128 absolute paths under a long root would not fit; 128 names of 12 chars do.
   */
  async lowerDirSpec(chainID: Digest): Promise<{ cwd: string; names: string[]; lowerdir: string }> {
    const names: string[] = [];
    for (const record of await this.chain(chainID)) names.push((await this.getContent(record.diffID)).dirName);
    return { cwd: this.layersDir, names, lowerdir: names.join(':') };
  }

  async inspect(chainID: Digest): Promise<LayerInfo> {
    const record = await this.getRecord(chainID);
    const content = await this.getContent(record.diffID);
    const children = (await this.allRecords()).filter((r) => r.parent === chainID).map((r) => r.chainID);
    return this.toInfo(record, content, await this.holders(chainID), children);
  }

  async list(): Promise<LayerInfo[]> {
    const records = await this.allRecords();
    const contents = new Map((await this.allContents()).map((c) => [c.diffID, c]));
    const refs = await this.metastore.entries<LayerRefRecord>('refs');
    return records.map((record) => {
      const content = contents.get(record.diffID);
      if (content === undefined) throw new StrataError('STRATA_STORE_CORRUPT', `layer ${record.chainID} has no content record for ${record.diffID}`);
      return this.toInfo(
        record,
        content,
        refs.filter(([, r]) => r.chainID === record.chainID).map(([, r]) => r.holder),
        records.filter((r) => r.parent === record.chainID).map((r) => r.chainID),
      );
    });
  }

  /** The public view of a layer: its record, its content's sizes and place, and who uses it. */
  private toInfo(record: LayerRecord, content: LayerContentRecord, holders: string[], children: Digest[]): LayerInfo {
    return {
      ...record,
      size: content.size,
      entries: content.entries,
      compressedDigest: content.compressedDigest,
      compressedSize: content.compressedSize,
      mediaType: content.mediaType,
      path: path.join(this.layersDir, content.dirName),
      holders,
      children,
    };
  }

  async getContent(diffID: Digest): Promise<LayerContentRecord> {
    const content = await this.metastore.get<LayerContentRecord>('layerContents', diffID);
    if (content === undefined) throw new StrataError('STRATA_STORE_CORRUPT', `no content record for diffID ${diffID}`);
    return content;
  }

  private async allRecords(): Promise<LayerRecord[]> {
    return (await this.metastore.entries<LayerRecord>('layers')).map(([, v]) => v);
  }

  private async allContents(): Promise<LayerContentRecord[]> {
    return (await this.metastore.entries<LayerContentRecord>('layerContents')).map(([, v]) => v);
  }

  // ---------------------------------------------------------------- references

  /** Holders of one layer (directly or through a chain above it), sorted. */
  async holders(chainID: Digest): Promise<string[]> {
    return (await this.metastore.entries<LayerRefRecord>('refs', `${chainID}|`)).map(([, r]) => r.holder).sort();
  }

  /**
   * `holder` (e.g. "mount:web") starts using exactly the listed layers (the mount service passes a whole chain,
   * chain() gives one); they cannot be removed until releaseLayers(). Persisted; idempotent.
   */
  async acquireLayers(chainIDs: readonly Digest[], holder: string): Promise<void> {
    await this.exclusive(async () => {
      for (const id of chainIDs) await this.getRecord(id);
      await this.metastore.batch(refOpsFor(chainIDs, holder, 'put'));
    });
  }

  async releaseLayers(chainIDs: readonly Digest[], holder: string): Promise<void> {
    await this.exclusive(async () => this.metastore.batch(refOpsFor(chainIDs, holder, 'del')));
  }

  /**
   * Writes `ops` (the holder's own record change) and `holder` taking ('put') or dropping ('del') a reference on
   * each of `chainIDs`, in one batch: a crash never leaves a reference without its record or the reverse.
   * Runs in the store's write queue, so no removal slips between the check that the layers exist and the write.
   */
  async writeWithReferences(chainIDs: readonly Digest[], holder: string, type: 'put' | 'del', ops: readonly BatchOp[]): Promise<void> {
    await this.exclusive(async () => {
      if (type === 'put') for (const id of chainIDs) await this.getRecord(id);
      await this.metastore.batch([...refOpsFor(chainIDs, holder, type), ...ops]);
    });
  }

  /** Runs `work` in the store's write queue (for a caller's batch that must not interleave with removals). */
  async serialised<T>(work: () => Promise<T>): Promise<T> {
    return this.exclusive(work);
  }

  /**
   * Makes the image: and mount: references exactly what the image and mount records name (on existing layers).
   * Run at daemon start-up, before anything is mounted or removed, and by fsck --repair.
   */
  async rebuildReferences(): Promise<ReferenceRepair> {
    return this.exclusive(async () => {
      const { add, remove } = await this.referenceDiff();
      const ops: BatchOp[] = [
        ...remove.map((key) => ({ type: 'del' as const, sublevel: 'refs' as const, key })),
        ...add.map((key) => {
          const [chainID, holder] = splitRefKey(key);
          return { type: 'put' as const, sublevel: 'refs' as const, key, value: { chainID, holder, since: new Date().toISOString() } satisfies LayerRefRecord };
        }),
      ];
      await this.metastore.batch(ops);
      if (ops.length > 0) this.log.warn({ added: add, removed: remove }, 'rebuilt layer references from the image and mount records');
      return { added: add, removed: remove };
    });
  }

  /** Reference keys the records call for but `refs` lacks, and image:/mount: keys no record backs. */
  private async referenceDiff(): Promise<{ add: string[]; remove: string[] }> {
    const snap = await this.metastore.snapshot(['layers', 'refs', 'images', 'mounts']);
    const layers = new Set((snap.get('layers') ?? []).map(([key]) => key));
    const expected = new Set<string>();
    for (const [chainID, holders] of recordedHolders(snap)) {
      if (!layers.has(chainID)) continue;
      for (const holder of holders) expected.add(`${chainID}|${holder}`);
    }
    const present = new Set((snap.get('refs') ?? []).map(([key]) => key));
    const add = [...expected].filter((key) => !present.has(key)).sort();
    const remove = [...present].filter((key) => {
      const [chainID, holder] = splitRefKey(key);
      return !expected.has(key) && (RECORDED_HOLDER.test(holder) || !layers.has(chainID));
    }).sort();
    return { add, remove };
  }

  /** chainID -> holders named by image and mount records (whether or not a ref says so). */
  private async namedByRecords(): Promise<Map<Digest, string[]>> {
    return recordedHolders(await this.metastore.snapshot(['images', 'mounts']));
  }

  // ---------------------------------------------------------------- removal

  /** Removes one layer; fails with STRATA_IN_USE naming its holders or child layers. */
  async remove(chainID: Digest): Promise<void> {
    await this.exclusive(async () => this.removeUnlocked(chainID));
  }

  /** Removes every layer that no holder and no child layer uses, repeatedly (children first). Returns them. */
  async prune(): Promise<Digest[]> {
    return this.exclusive(async () => {
      const removed: Digest[] = [];
      for (;;) {
        const records = await this.allRecords();
        const held = new Set((await this.metastore.entries<LayerRefRecord>('refs')).map(([, r]) => r.chainID));
        const named = await this.namedByRecords();
        for (const chainID of named.keys()) held.add(chainID);
        const parents = new Set(records.map((r) => r.parent));
        const unused = records.filter((r) => !held.has(r.chainID) && !parents.has(r.chainID));
        if (unused.length === 0) return removed;
        for (const r of unused) {
          await this.removeUnlocked(r.chainID, named);
          removed.push(r.chainID);
        }
      }
    });
  }

  /** `named`: namedByRecords(), when the caller (prune, in the write queue) has just read it. */
  private async removeUnlocked(chainID: Digest, named?: Map<Digest, string[]>): Promise<void> {
    const record = await this.getRecord(chainID);
    const holders = [...new Set([...(await this.holders(chainID)), ...((named ?? (await this.namedByRecords())).get(chainID) ?? [])])].sort();
    const records = await this.allRecords();
    const children = records.filter((r) => r.parent === chainID).map((r) => `layer:${r.chainID}`);
    if (holders.length > 0 || children.length > 0) {
      throw new StrataError('STRATA_IN_USE', `layer ${chainID} is in use by ${[...holders, ...children].join(', ')}`);
    }
    const ops: BatchOp[] = [{ type: 'del', sublevel: 'layers', key: chainID }];
    const contentShared = records.some((r) => r.chainID !== chainID && r.diffID === record.diffID);
    const content = contentShared ? undefined : await this.getContent(record.diffID);
    if (content !== undefined) ops.push({ type: 'del', sublevel: 'layerContents', key: record.diffID });
    await this.metastore.batch(ops);
    if (content !== undefined) await this.deleteContentDir(content.dirName);
    this.log.info({ chainID, contentDeleted: content !== undefined }, 'removed layer');
  }

  /** Old data goes last: move out of layers/ (atomic), then delete at leisure; recover() finishes a crash here. */
  private async deleteContentDir(dirName: string): Promise<void> {
    const trash = path.join(this.tmpDir, `trash-${dirName}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(path.join(this.layersDir, dirName), trash);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return;
      throw err;
    }
    await rm(trash, { recursive: true, force: true });
  }

  // ---------------------------------------------------------------- recovery and fsck (recovery.ts)

  /**
   * Brings disk and database back in line after a crash: finishes committed renames, drops records whose
   * content is gone (and chains and references built on them), deletes staged dirs and unrecorded content.
   */
  async recover(): Promise<RecoveryReport> {
    return this.exclusive(async () => recoverLayerStore(this.recoveryView()));
  }

  /**
   * Checks the layer, reference, image and mount records against each other and against layers/. With `repair`,
   * fixes what needs no data to be given up: finishes an interrupted rename, clears a stale stagingName, moves
   * unrecorded content dirs to lost+found, adds and removes references to match the records, drops image names
   * pointing at no image. Records whose content is gone are only reported: fixing them needs the image again.
   */
  async fsck(repair: boolean): Promise<FsckProblem[]> {
    return this.exclusive(async () => fsckLayerStore(this.recoveryView(), repair));
  }

  private recoveryView(): RecoveryView {
    return {
      metastore: this.metastore, layersDir: this.layersDir, tmpDir: this.tmpDir, lostAndFound: this.lostAndFound, log: this.log,
      contents: () => this.allContents(), records: () => this.allRecords(), referenceDiff: () => this.referenceDiff(),
    };
  }

  // ---------------------------------------------------------------- helpers

  private async native(): Promise<StrataSys> {
    if (this.sysModule === null) {
      const mod = await import('../native/index.js');
      this.sysModule = mod.sys;
    }
    return this.sysModule;
  }

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.writeLock.run(work);
  }
}

function mediaTypeFor(compression: Compression): string {
  switch (compression) {
    case 'gzip': return 'application/vnd.oci.image.layer.v1.tar+gzip';
    case 'zstd': return 'application/vnd.oci.image.layer.v1.tar+zstd';
    case 'none': return 'application/vnd.oci.image.layer.v1.tar';
  }
}

function uniqueDirName(diffID: Digest, used: ReadonlySet<string>): string {
  const hex = hexOf(diffID);
  for (let len = DIR_NAME_LENGTH; len <= hex.length; len += 4) {
    const name = hex.slice(0, len);
    if (!used.has(name)) return name;
  }
  throw new StrataError('STRATA_STORE_CORRUPT', `diffID ${diffID} is already stored under another record`);
}

/** Batch operations for `holder` holding (or not) each of `chainIDs`, e.g. a chain being committed in the same batch. */
export function refOpsFor(chainIDs: readonly Digest[], holder: string, type: 'put' | 'del'): BatchOp[] {
  validateHolder(holder);
  const since = new Date().toISOString();
  return chainIDs.map((chainID) => {
    const key = `${chainID}|${holder}`;
    return type === 'put'
      ? { type, sublevel: 'refs' as const, key, value: { chainID, holder, since } satisfies LayerRefRecord }
      : { type, sublevel: 'refs' as const, key };
  });
}

function validateHolder(holder: string): void {
  if (!/^[a-z]+:\S+$/.test(holder)) {
    throw new StrataError('STRATA_BAD_OPTION', `holder "${holder}" must look like "<kind>:<name>" (e.g. "mount:web")`);
  }
}

async function statOrThrow(file: string) {
  try {
    return await stat(file);
  } catch (err) {
    throw new StrataError('STRATA_NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}


/** syncfs(2) of the filesystem holding `dir` (coreutils `sync -f`): one flush for a whole extracted layer. */
async function syncFilesystem(dir: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn('sync', ['--file-system', dir], { stdio: 'ignore' });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new StrataError('STRATA_INTERNAL', `sync -f ${dir} exited ${code}`))));
  });
}


/**
 * chainID -> holders, as the image and mount records name them: image `id` holds its `chainIDs` as `image:<id>`,
 * mount `Name` holds its `LayerIds` as `mount:<Name>`.
 */
function recordedHolders(snap: Map<string, Array<[string, unknown]>>): Map<Digest, string[]> {
  const out = new Map<Digest, string[]>();
  const add = (chainIDs: unknown, holder: string) => {
    if (!Array.isArray(chainIDs)) return;
    for (const id of chainIDs) {
      if (typeof id !== 'string') continue;
      const list = out.get(id as Digest) ?? [];
      if (!list.includes(holder)) list.push(holder);
      out.set(id as Digest, list);
    }
  };
  for (const [, image] of snap.get('images') ?? []) {
    const img = image as { id?: string; chainIDs?: unknown };
    if (typeof img.id === 'string') add(img.chainIDs, `image:${img.id}`);
  }
  for (const [, mount] of snap.get('mounts') ?? []) {
    const m = mount as { Name?: string; LayerIds?: unknown };
    if (typeof m.Name === 'string') add(m.LayerIds, `mount:${m.Name}`);
  }
  return out;
}
