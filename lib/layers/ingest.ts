/**
 * How a layer gets into the store: a tar (file, stream, or a directory read through GNU tar) is extracted and
 * verified into layer-tmp (stage), then committed: one batch writes the content record (with its stagingName), the
 * chain records and the caller's own ops, and only then is the staged dir renamed into layers/ (see layer-store.ts
 * for the crash-safety argument; recovery.ts finishes or undoes each step after a crash).
 *
 * A layer can also come in packed (stagePackedBlob): its blob, already verified against its digest, is staged as
 * a file and committed the same way, but moved into layer-blobs/ instead of layers/. unpackLayer later extracts
 * it the way any blob is staged (both digests checked), then one batch marks the content extracted, the dir is
 * moved into layers/ and the blob deleted last.
 *
 * Invariants:
 *  - Nothing outside layer-tmp is written before the batch; a staged dir that fails verification is deleted.
 *  - Each diffID is stored once: staged content whose diffID the store (or the same batch) already holds is
 *    discarded after the batch.
 *  - commitLayers reads then writes the metastore: the caller runs it in the store's write lock.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { StrataSys } from '../native/index.js';
import { fsyncDir } from '../store/lost-found.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import { applyLayerTar } from './apply-tar.js';
import { decompressor, detectCompression, type Compression, type GunzipTool } from './compression.js';
import { HashingStream, chainIdOf, hexOf, type Digest } from './digest.js';
import type { LayerQueries } from './queries.js';
import type { LayerContentRecord, LayerRecord } from './types.js';

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
  /**
   * false: leave the syncfs to the commit, which does one for all the unsynced layers it commits (commitLayers);
   * for callers that stage several layers at once. Default true: the staged layer is durable when returned.
   */
  sync?: boolean;
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
  /** False until a syncfs made the staged files durable; commitLayers syncs before its batch when any is false. */
  synced: boolean;
  /** stagingName is the layer's blob (a file), not an extracted dir: committed as packed content. */
  packed?: true;
}

/** One layer to commit: either newly staged content, or a diffID whose content the store already holds. */
export type CommitItem = { staged: StagedLayer } | { existingDiffID: Digest };

/** What ingest needs of the store. */
export interface IngestContext {
  metastore: Metastore;
  layersDir: string;
  /** Packed layers' blobs, named like their content dirs. */
  blobsDir: string;
  tmpDir: string;
  log: Logger;
  limits: LayerStoreLimits;
  /** The native addon, loaded on first use (a store that only reads never loads it). */
  native(): Promise<StrataSys>;
  /** The gzip decoder (igzip or node:zlib), found on first use. */
  gunzipTool(): Promise<GunzipTool>;
}

/** Extracts and verifies a layer blob (plain, gzip or zstd) into layer-tmp. The caller commits or discards it. */
export async function stageTarFile(ctx: IngestContext, file: string, options: StageOptions): Promise<StagedLayer> {
  const compression = await detectCompression(file);
  if (options.expectSize !== undefined) {
    const st = await statOrThrow(file);
    if (st.size !== options.expectSize) {
      throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: blob has ${st.size} bytes, its descriptor says ${options.expectSize}`);
    }
  }
  return stage(ctx, createReadStream(file, { highWaterMark: 1 << 20 }), compression, options);
}

/** Extracts and verifies an uncompressed layer tar read from a stream into layer-tmp. */
export async function stageStream(ctx: IngestContext, source: Readable, options: StageOptions): Promise<StagedLayer> {
  return stage(ctx, source, 'none', options);
}

/**
 * Stages a directory as a layer. It is read as a layer in overlayfs format (a char device 0/0 is a whiteout,
 * trusted.overlay.opaque=y an opaque dir), through GNU tar so the diffID is that of a reproducible POSIX tar.
 */
export async function stageDirectory(ctx: IngestContext, dir: string, onProgress: (bytes: number) => void): Promise<StagedLayer> {
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
    staged = await stage(ctx, tarOut, 'none', { what: dir, mediaType: 'application/vnd.oci.image.layer.v1.tar', onProgress });
  } catch (err) {
    tar.kill('SIGKILL');
    throw err;
  }
  const code = await exited;
  if (code !== 0) {
    await discardStaged(ctx, staged);
    throw new StrataError('STRATA_BAD_DIR', `cannot read ${dir}: ${tarErrors.trim() || `tar exited ${code}`}`);
  }
  return staged;
}

async function stage(ctx: IngestContext, source: Readable, compression: Compression, options: StageOptions): Promise<StagedLayer> {
  const mediaType = options.mediaType ?? mediaTypeFor(compression);
  if (!LAYER_MEDIA_TYPES.has(mediaType)) {
    source.destroy();
    throw new StrataError('STRATA_UNSUPPORTED', `${options.what}: unsupported layer media type "${mediaType}"`);
  }
  const sys = await ctx.native();
  const stagingName = `stage-${randomBytes(6).toString('hex')}`;
  const stagingDir = path.join(ctx.tmpDir, stagingName);
  await mkdir(stagingDir, { mode: 0o755 });
  try {
    const blobHash = new HashingStream(ctx.limits.maxBlobBytes, `${options.what}`);
    const tarHash = new HashingStream(ctx.limits.maxTarBytes, `${options.what} (uncompressed)`);
    if (options.onProgress) {
      const report = options.onProgress;
      blobHash.on('data', () => report(blobHash.bytes));
    }
    const decoder = decompressor(compression, options.what, compression === 'gzip' ? await ctx.gunzipTool() : null);
    const result = await applyLayerTar(source, [blobHash, decoder.stream, tarHash], stagingDir, {
      what: options.what,
      maxEntryBytes: ctx.limits.maxEntryBytes,
      logger: ctx.log,
      sys,
    });
    await decoder.checked;
    if (tarHash.bytes === 0) throw new StrataError('STRATA_BAD_ARCHIVE', `${options.what} is empty, not a tar`);
    const blobDigest = blobHash.digest;
    if (options.expectDigest !== undefined && blobDigest !== options.expectDigest) {
      throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: blob digest is ${blobDigest}, expected ${options.expectDigest}`);
    }
    if (options.expectSize !== undefined && blobHash.bytes !== options.expectSize) {
      throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: blob has ${blobHash.bytes} bytes, its descriptor says ${options.expectSize}`);
    }
    if (options.expectDiffID !== undefined && tarHash.digest !== options.expectDiffID) {
      throw new StrataError('STRATA_DIGEST_MISMATCH', `${options.what}: uncompressed tar has diffID ${tarHash.digest}, the image config says ${options.expectDiffID}`);
    }
    const synced = options.sync !== false;
    if (synced) await syncFilesystem(stagingDir);
    const staged: StagedLayer = {
      stagingName,
      diffID: tarHash.digest,
      compressedDigest: blobDigest,
      compressedSize: blobHash.bytes,
      size: result.contentBytes,
      entries: result.entries,
      mediaType,
      synced,
    };
    ctx.log.debug({ what: options.what, diffID: staged.diffID, entries: staged.entries }, 'staged layer');
    return staged;
  } catch (err) {
    await rm(stagingDir, { recursive: true, force: true });
    throw err;
  }
}

export interface PackedBlob {
  /** Names the blob in errors and logs. */
  what: string;
  mediaType: string;
  /** Digest and size the blob was verified against (by the caller, e.g. the registry download). */
  digest: Digest;
  size: number;
  /** The diffID the image config gives the layer; checked when the layer is extracted. */
  diffID: Digest;
  /** The blob's data is durable already (fdatasync): the commit then only flushes the rename into layer-tmp. */
  synced: boolean;
}

/**
 * Stages a verified layer blob as it is, for a commit that stores it packed: the file is renamed into layer-tmp
 * (same filesystem), nothing is extracted. The caller commits or discards the result.
 */
export async function stagePackedBlob(ctx: IngestContext, file: string, blob: PackedBlob): Promise<StagedLayer> {
  if (!LAYER_MEDIA_TYPES.has(blob.mediaType)) throw new StrataError('STRATA_UNSUPPORTED', `${blob.what}: unsupported layer media type "${blob.mediaType}"`);
  if (blob.size > ctx.limits.maxBlobBytes) throw new StrataError('STRATA_BAD_ARCHIVE', `${blob.what}: ${blob.size} bytes, above the ${ctx.limits.maxBlobBytes}-byte limit`);
  const stagingName = `blob-${randomBytes(6).toString('hex')}`;
  await rename(file, path.join(ctx.tmpDir, stagingName));
  return {
    stagingName, diffID: blob.diffID, compressedDigest: blob.digest, compressedSize: blob.size, size: 0, entries: 0,
    mediaType: blob.mediaType, synced: blob.synced, packed: true,
  };
}

/**
 * Extracts a packed layer: its blob is staged like any other (digest, size and diffID all checked), then one
 * batch marks the content extracted (with stagingName, for recovery's roll forward), the dir is moved into
 * layers/, and the blob is deleted last. `exclusive` runs the commit part in the store's write lock, where the
 * record is read again: a layer removed or extracted meanwhile is left alone.
 */
export async function unpackLayer(ctx: IngestContext, diffID: Digest, exclusive: <T>(work: () => Promise<T>) => Promise<T>): Promise<void> {
  const before = await ctx.metastore.get<LayerContentRecord>('layerContents', diffID);
  if (before?.packed !== true) return;
  const blob = placeOf(ctx, before);
  const started = Date.now();
  const staged = await stageTarFile(ctx, blob, {
    what: `layer ${diffID} (blob ${before.compressedDigest})`,
    mediaType: before.mediaType,
    expectDigest: before.compressedDigest,
    expectSize: before.compressedSize,
    expectDiffID: diffID,
  });
  await exclusive(async () => {
    const now = await ctx.metastore.get<LayerContentRecord>('layerContents', diffID);
    if (now?.packed !== true) {
      await discardStaged(ctx, staged);
      return;
    }
    const content = extractedRecord(now, staged);
    await ctx.metastore.batch([{ type: 'put', sublevel: 'layerContents', key: diffID, value: content }]);
    await moveIntoPlace(ctx, [content]);
    await rm(blob, { force: true });
  });
  ctx.log.info({ diffID, entries: staged.entries, bytes: staged.size, ms: Date.now() - started }, 'extracted packed layer');
}

/** The record of packed content once `staged`, its extraction, takes the blob's place (moved in by stagingName). */
function extractedRecord(packed: LayerContentRecord, staged: StagedLayer): LayerContentRecord {
  const { packed: _packed, ...rest } = packed;
  return { ...rest, size: staged.size, entries: staged.entries, stagingName: staged.stagingName };
}

/** Deletes a staged layer that will not be committed. */
export async function discardStaged(ctx: IngestContext, staged: StagedLayer): Promise<void> {
  await rm(path.join(ctx.tmpDir, staged.stagingName), { recursive: true, force: true });
}

/**
 * Commits a stack of layers on top of `parent` in one batch together with `extraOps(chainIDs)` (an image
 * record, references), then moves new content into place. Returns the chainIDs, bottom first.
 * Run in the store's write lock.
 */
export async function commitLayers(ctx: IngestContext, queries: LayerQueries, parent: Digest | null, items: readonly CommitItem[], extraOps?: (chainIDs: Digest[]) => BatchOp[]): Promise<Digest[]> {
  const ops: BatchOp[] = [];
  const now = new Date().toISOString();
  const toRename: LayerContentRecord[] = [];
  const toDiscard: StagedLayer[] = [];
  const replacedBlobs: string[] = [];
  const contentsInBatch = new Map<Digest, LayerContentRecord>();
  const usedDirNames = new Set((await queries.contents()).map((c) => c.dirName));
  const chainIDs: Digest[] = [];
  let below = parent;
  let depth = parent === null ? 0 : (await queries.getRecord(parent)).depth;
  for (const item of items) {
    const diffID = 'staged' in item ? item.staged.diffID : item.existingDiffID;
    const existing = contentsInBatch.get(diffID) ?? (await ctx.metastore.get<LayerContentRecord>('layerContents', diffID));
    if ('staged' in item && existing?.packed === true && item.staged.packed !== true && !contentsInBatch.has(diffID)) {
      // Extracted content for a layer the store holds packed takes the blob's place (deleted last): no extraction
      // is left to do. The staged diffID was computed from the tar itself, so it is the record's.
      const content = extractedRecord(existing, item.staged);
      contentsInBatch.set(diffID, content);
      toRename.push(content);
      replacedBlobs.push(placeOf(ctx, existing));
      ops.push({ type: 'put', sublevel: 'layerContents', key: diffID, value: content });
    } else if ('staged' in item && existing !== undefined) {
      toDiscard.push(item.staged);
    }
    if (existing === undefined) {
      if (!('staged' in item)) throw new StrataError('STRATA_NOT_FOUND', `layer content ${diffID} is not in the store`);
      const s = item.staged;
      const content: LayerContentRecord = {
        diffID, dirName: uniqueDirName(diffID, usedDirNames), size: s.size, entries: s.entries,
        compressedDigest: s.compressedDigest, compressedSize: s.compressedSize, mediaType: s.mediaType,
        createdAt: now, stagingName: s.stagingName, ...(s.packed === true ? { packed: true as const } : {}),
      };
      usedDirNames.add(content.dirName);
      contentsInBatch.set(diffID, content);
      toRename.push(content);
      ops.push({ type: 'put', sublevel: 'layerContents', key: diffID, value: content });
    }
    const chainID = chainIdOf(below, diffID);
    depth += 1;
    if ((await ctx.metastore.get<LayerRecord>('layers', chainID)) === undefined) {
      const record: LayerRecord = { chainID, diffID, parent: below, depth, createdAt: now };
      ops.push({ type: 'put', sublevel: 'layers', key: chainID, value: record });
    }
    chainIDs.push(chainID);
    below = chainID;
  }
  if (extraOps) ops.push(...extraOps(chainIDs));
  // Layer data is durable before the record that makes it visible: one syncfs covers every layer staged unsynced
  // (and every packed blob).
  if (items.some((item) => 'staged' in item && !item.staged.synced)) await syncFilesystem(ctx.tmpDir);
  else if (items.some((item) => 'staged' in item && item.staged.packed === true)) await fsyncDir(ctx.tmpDir);
  await ctx.metastore.batch(ops);
  await moveIntoPlace(ctx, toRename);
  for (const blob of replacedBlobs) await rm(blob, { force: true });
  for (const s of toDiscard) await discardStaged(ctx, s);
  ctx.log.info({ chainIDs, newContents: toRename.length }, 'committed layers');
  return chainIDs;
}

/** Where committed content lives: its extracted dir, or its blob while packed. */
export function placeOf(dirs: { layersDir: string; blobsDir: string }, content: LayerContentRecord): string {
  return path.join(content.packed === true ? dirs.blobsDir : dirs.layersDir, content.dirName);
}

/** Step 3 of an import: rename staged dirs (or blobs) into place, make the renames durable, then clear stagingName. */
async function moveIntoPlace(ctx: IngestContext, contents: readonly LayerContentRecord[]): Promise<void> {
  if (contents.length === 0) return;
  for (const c of contents) await rename(path.join(ctx.tmpDir, c.stagingName!), placeOf(ctx, c));
  if (contents.some((c) => c.packed !== true)) await fsyncDir(ctx.layersDir);
  if (contents.some((c) => c.packed === true)) await fsyncDir(ctx.blobsDir);
  await fsyncDir(ctx.tmpDir);
  // The import is committed and in place: a stale stagingName only means recover() (or fsck --repair) clears it
  // later, so a store that cannot take this write must not turn a committed import into a reported failure.
  await ctx.metastore.batch(contents.map((c) => {
    const { stagingName: _done, ...placed } = c;
    return { type: 'put' as const, sublevel: 'layerContents' as const, key: c.diffID, value: placed };
  })).catch((err: unknown) => {
    ctx.log.warn({ err, diffIDs: contents.map((c) => c.diffID) }, 'could not clear stagingName after moving layers into place; start-up will');
  });
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

export async function statOrThrow(file: string) {
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
