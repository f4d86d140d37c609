/**
 * The layer store: each layer's content extracted once (by diffID) under <root>/layers/<dirName>, and its
 * metadata in LevelDB (chain records, content records, references).
 *
 * Lifecycle of an import (crash-safe; kill -9 at any point leaves the whole layer or nothing):
 *  1. stage:  extract into <root>/layer-tmp/<stagingName>, verify digests, syncfs (or leave the syncfs to step 2,
 *             which then does one for all the layers it commits, before its batch);
 *  2. commit: one batch() writes the content record (with stagingName), the chain records and whatever the caller
 *             adds (an image record, references);
 *  3. rename: <root>/layer-tmp/<stagingName> -> <root>/layers/<dirName>, fsync <root>/layers, clear stagingName.
 * recover() (run by open()) finishes step 3 for committed records, drops records whose content is gone, deletes
 * every staged dir (never committed: the user's source still has the data) and moves every content dir without a
 * record to <root>/lost+found (a record lost to a damaged log must not cost the data).
 * Removal is the reverse: one batch() deletes the records, then the dir is renamed into layer-tmp and deleted.
 *
 * Packed layers: a registry pull stores each layer as its verified blob under <root>/layer-blobs/<dirName> (the
 * same three steps, with a file for a dir), so a pull costs what the transfer costs. Anything that needs the
 * files extracts first: lowerDirs()/lowerDirSpec() (what a mount stacks) and contentDir() (export, push) unpack
 * the layers they return, one extraction per layer however many callers wait for it; stratad also extracts
 * packed layers in the background (startBackgroundUnpack). The diffID is verified at extraction: a blob that
 * does not match its image config fails every use with STRATA_DIGEST_MISMATCH and stays packed.
 *
 * References: a holder (`image:<id>`, `mount:<name>`) that acquires a chainID holds every layer of that chain.
 * The `refs` sublevel is derived data: image and mount records name the layers they use, and
 * rebuildReferences() (daemon start-up, fsck --repair) makes the image:/mount: refs match them again. A layer
 * with holders, child layers, or an image or mount record naming it cannot be removed (STRATA_IN_USE, naming
 * them), whatever the refs say.
 *
 * This class is the facade its callers use; each question has its own file, the way containerd separates content,
 * the diff applier, metadata and garbage collection:
 *   ingest.ts      how a layer gets in (stage into layer-tmp, commit, move into place); apply-tar.ts applies a tar
 *   queries.ts     what is stored (records, chains, lowerdirs, the public LayerInfo)
 *   references.ts  who holds what (ref ops, rebuilding refs from the image and mount records)
 *   prune.ts       what can go and how it goes (remove, prune)
 *   recovery.ts    crash recovery and fsck
 * Everything that writes the metastore runs in this store's one write lock (`exclusive`).
 */
import { link, mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { StrataSys } from '../native/index.js';
import { LostAndFound } from '../store/lost-found.js';
import { findGunzipTool, type GunzipChoice, type GunzipTool } from './compression.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import type { Digest } from './digest.js';
import {
  DEFAULT_LIMITS, commitLayers, discardStaged, placeOf, stageDirectory, stagePackedBlob, stageStream, stageTarFile,
  statOrThrow, unpackLayer, type CommitItem, type IngestContext, type LayerStoreLimits, type PackedBlob, type StageOptions,
  type StagedLayer,
} from './ingest.js';
import { pruneLayers, removeLayer, type PruneContext } from './prune.js';
import { LayerQueries } from './queries.js';
import { rebuildReferences, referenceDiff, refOpsFor, type ReferenceRepair } from './references.js';
import type { LayerContentRecord, LayerInfo, LayerRecord, ProgressListener } from './types.js';
import { Lock } from '../util/keyed-lock.js';
import { fsckLayerStore, recoverLayerStore, type FsckProblem, type RecoveryReport, type RecoveryView } from './recovery.js';

export type { FsckProblem, RecoveryReport } from './recovery.js';
export { DEFAULT_LIMITS, LAYER_MEDIA_TYPES } from './ingest.js';
export type { CommitItem, LayerStoreLimits, PackedBlob, StageOptions, StagedLayer } from './ingest.js';
export { refOpsFor } from './references.js';
export type { ReferenceRepair } from './references.js';

export class LayerStore {
  readonly layersDir: string;
  readonly blobsDir: string;
  readonly tmpDir: string;
  private readonly log: Logger;
  private readonly limits: LayerStoreLimits;
  private readonly lostAndFound: LostAndFound;
  private readonly queries: LayerQueries;
  private sysModule: StrataSys | null = null;
  private readonly gunzipChoice: GunzipChoice;
  private gunzip: Promise<GunzipTool> | null = null;
  /** Serialises commits and removals, which read-then-write the metastore. */
  private readonly writeLock = new Lock();
  /** Extractions running, by diffID: a second caller waits for the first one's. */
  private readonly unpacking = new Map<Digest, Promise<void>>();
  /** The background extraction loop (stratad), and whether more work came in while it ran. */
  /** `failed`: layers the background gave up on, and whether for good (their bytes are wrong) or until the next poke. */
  private background: { running: Promise<void> | null; again: boolean; stopped: boolean; failed: Map<Digest, 'for good' | 'until poked'> } | null = null;

  constructor(
    private readonly metastore: Metastore,
    readonly rootDir: string,
    logger: Logger,
    limits: Partial<LayerStoreLimits> & { gunzip?: GunzipChoice } = {},
    lostAndFound?: LostAndFound,
  ) {
    this.layersDir = path.join(rootDir, 'layers');
    this.blobsDir = path.join(rootDir, 'layer-blobs');
    this.tmpDir = path.join(rootDir, 'layer-tmp');
    this.log = logger.child({ component: 'layers' });
    const { gunzip = 'auto', ...sizeLimits } = limits;
    this.limits = { ...DEFAULT_LIMITS, ...sizeLimits };
    this.gunzipChoice = gunzip;
    this.lostAndFound = lostAndFound ?? new LostAndFound(rootDir, logger);
    this.queries = new LayerQueries(metastore, this.layersDir);
  }

  /** Creates the store dirs and cleans up after any crash (see recover()). Call once before use. */
  async open(): Promise<RecoveryReport> {
    await mkdir(this.layersDir, { recursive: true, mode: 0o700 });
    await mkdir(this.blobsDir, { recursive: true, mode: 0o700 });
    await mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
    return this.recover();
  }

  // ---------------------------------------------------------------- import (ingest.ts)

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
    const staged = await stageDirectory(this.ingest, dir, (bytes) => options.onProgress?.({ layer: 1, layers: 1, bytes, totalBytes: null }));
    const [chainID] = await this.commit(parent, [{ staged }]);
    return this.inspect(chainID!);
  }

  /** Extracts and verifies a layer blob into layer-tmp. The caller commits or discards the result. */
  async stageTarFile(file: string, options: StageOptions): Promise<StagedLayer> {
    return stageTarFile(this.ingest, file, options);
  }

  /** Extracts and verifies an uncompressed layer tar read from a stream (a commit's output) into layer-tmp. */
  async stageStream(source: Readable, options: StageOptions): Promise<StagedLayer> {
    return stageStream(this.ingest, source, options);
  }

  /**
   * Stages a layer blob the caller has verified against its digest (a registry download) to be committed packed:
   * `file` is renamed into layer-tmp, nothing is extracted. The caller commits or discards the result.
   */
  async stagePackedBlob(file: string, blob: PackedBlob): Promise<StagedLayer> {
    return stagePackedBlob(this.ingest, file, blob);
  }

  /** Deletes a staged layer that will not be committed. */
  async discard(staged: StagedLayer): Promise<void> {
    await discardStaged(this.ingest, staged);
  }

  /**
   * Commits a stack of layers on top of `parent` in one batch together with `extraOps(chainIDs)` (an image
   * record, references), then moves new content into place. Returns the chainIDs, bottom first.
   * Staged content whose diffID the store already holds is discarded: each diffID is stored once.
   */
  async commit(parent: Digest | null, items: readonly CommitItem[], extraOps?: (chainIDs: Digest[]) => BatchOp[]): Promise<Digest[]> {
    const chainIDs = await this.exclusive(async () => commitLayers(this.ingest, this.queries, parent, items, extraOps));
    if (items.some((item) => 'staged' in item && item.staged.packed === true)) this.pokeBackgroundUnpack();
    return chainIDs;
  }

  // ---------------------------------------------------------------- packed layers (ingest.ts unpackLayer)

  /** Extracts every packed layer of the chain ending at `chainID`, bottom first. */
  async unpackChain(chainID: Digest): Promise<void> {
    for (const record of (await this.queries.chain(chainID)).reverse()) await this.unpackContent(record.diffID);
  }

  /** Extracts one packed diffID (nothing if extracted); concurrent callers share one extraction. */
  async unpackContent(diffID: Digest): Promise<void> {
    let running = this.unpacking.get(diffID);
    if (running === undefined) {
      running = unpackLayer(this.ingest, diffID, (work) => this.exclusive(work)).finally(() => this.unpacking.delete(diffID));
      this.unpacking.set(diffID, running);
    }
    await running;
  }

  /**
   * Makes `dest` a hard link to the blob of a packed layer and returns true; false when the layer is extracted
   * (or is extracted meanwhile, which deletes the blob). The link keeps the bytes for the caller whatever the
   * store does with its own name, so no lock is held while the caller reads them. `dest` must be on the store's
   * filesystem (the registry cache is).
   */
  async linkPackedBlob(diffID: Digest, dest: string): Promise<boolean> {
    const content = await this.queries.getContent(diffID);
    if (content.packed !== true) return false;
    try {
      await link(placeOf(this.ingest, content), dest);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'EXDEV') return false;
      throw err;
    }
  }

  /** The extracted content dir of one layer (not its chain), extracting it first if it is packed. */
  async contentDir(chainID: Digest): Promise<string> {
    const record = await this.queries.getRecord(chainID);
    await this.unpackContent(record.diffID);
    return path.join(this.layersDir, (await this.queries.getContent(record.diffID)).dirName);
  }

  /**
   * Extracts packed layers one at a time in the background until none is left, from now on: again after every
   * commit of packed layers (stratad calls this once it is ready). A layer whose extraction fails is logged and
   * left packed for its next use to report. Its bytes being wrong (a diffID or tar that does not match) is
   * final: the background does not try it again. Any other failure (a full disk, an I/O error) is tried again
   * after the next commit of packed layers. Stopped by stopBackgroundUnpack().
   */
  startBackgroundUnpack(): void {
    this.background ??= { running: null, again: false, stopped: false, failed: new Map() };
    this.pokeBackgroundUnpack();
  }

  /** Runs the background extraction, if it was started, or has it look again when it is running. */
  private pokeBackgroundUnpack(): void {
    const bg = this.background;
    if (bg === null || bg.stopped) return;
    for (const [diffID, how] of bg.failed) if (how === 'until poked') bg.failed.delete(diffID);
    if (bg.running !== null) {
      bg.again = true;
      return;
    }
    const { failed } = bg;
    const loop = async (): Promise<void> => {
      do {
        bg.again = false;
        for (const content of await this.queries.contents()) {
          if (bg.stopped) return;
          if (content.packed !== true || failed.has(content.diffID)) continue;
          await this.unpackContent(content.diffID).catch(async (err: unknown) => {
            const final = err instanceof StrataError && (err.code === 'STRATA_DIGEST_MISMATCH' || err.code === 'STRATA_BAD_ARCHIVE');
            failed.set(content.diffID, final ? 'for good' : 'until poked');
            // Removed while it was being extracted (image rm, then prune): nothing went wrong.
            if (!(await this.queries.hasContent(content.diffID))) return;
            this.log.error({ err, diffID: content.diffID, retry: final ? 'never' : 'after the next pull' }, 'could not extract a packed layer; it stays packed, and its next use reports this');
          });
        }
      } while (bg.again && !bg.stopped);
    };
    bg.running = loop().catch((err: unknown) => {
      this.log.error({ err }, 'background extraction of packed layers stopped');
    }).finally(() => { bg.running = null; });
  }

  /** Stops the background extraction after the layer in hand; resolves once it has stopped. */
  async stopBackgroundUnpack(): Promise<void> {
    if (this.background === null) return;
    this.background.stopped = true;
    await this.background.running;
  }

  // ---------------------------------------------------------------- queries (queries.ts)

  /** Resolves a chainID, "sha256:<prefix>" or a hex prefix (at least 4 chars) to one layer's chainID. */
  async resolve(ref: string): Promise<Digest> {
    return this.queries.resolve(ref);
  }

  async has(chainID: Digest): Promise<boolean> {
    return this.queries.has(chainID);
  }

  async hasContent(diffID: Digest): Promise<boolean> {
    return this.queries.hasContent(diffID);
  }

  async getRecord(chainID: Digest): Promise<LayerRecord> {
    return this.queries.getRecord(chainID);
  }

  /** The chain ending at `chainID`, top layer first. */
  async chain(chainID: Digest): Promise<LayerRecord[]> {
    return this.queries.chain(chainID);
  }

  /**
   * Absolute content dirs of the chain ending at `chainID`, top layer first, as overlayfs `lowerdir=` wants them.
   * Packed layers of the chain are extracted first.
   */
  async lowerDirs(chainID: Digest): Promise<string[]> {
    await this.unpackChain(chainID);
    return this.queries.lowerDirs(chainID);
  }

  /** The same stack as short names relative to `cwd` (<root>/layers); see LayerQueries.lowerDirSpec. */
  async lowerDirSpec(chainID: Digest): Promise<{ cwd: string; names: string[]; lowerdir: string }> {
    await this.unpackChain(chainID);
    return this.queries.lowerDirSpec(chainID);
  }

  async inspect(chainID: Digest): Promise<LayerInfo> {
    return this.queries.inspect(chainID);
  }

  async list(): Promise<LayerInfo[]> {
    return this.queries.list();
  }

  async getContent(diffID: Digest): Promise<LayerContentRecord> {
    return this.queries.getContent(diffID);
  }

  // ---------------------------------------------------------------- references (references.ts)

  /** Holders of one layer (directly or through a chain above it), sorted. */
  async holders(chainID: Digest): Promise<string[]> {
    return this.queries.holders(chainID);
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
    return this.exclusive(async () => rebuildReferences(this.metastore, this.log));
  }

  // ---------------------------------------------------------------- removal (prune.ts)

  /** Removes one layer; fails with STRATA_IN_USE naming its holders or child layers. */
  async remove(chainID: Digest): Promise<void> {
    await this.exclusive(async () => removeLayer(this.pruning, chainID));
  }

  /** Removes every layer that no holder and no child layer uses, repeatedly (children first). Returns them. */
  async prune(): Promise<Digest[]> {
    return this.exclusive(async () => pruneLayers(this.pruning));
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

  // ---------------------------------------------------------------- the views each part gets

  private get ingest(): IngestContext {
    return {
      metastore: this.metastore, layersDir: this.layersDir, blobsDir: this.blobsDir, tmpDir: this.tmpDir, log: this.log, limits: this.limits,
      native: () => this.native(),
      gunzipTool: () => (this.gunzip ??= findGunzipTool(this.gunzipChoice)),
    };
  }

  private get pruning(): PruneContext {
    return { metastore: this.metastore, queries: this.queries, layersDir: this.layersDir, blobsDir: this.blobsDir, tmpDir: this.tmpDir, log: this.log };
  }

  private recoveryView(): RecoveryView {
    return {
      metastore: this.metastore, layersDir: this.layersDir, blobsDir: this.blobsDir, tmpDir: this.tmpDir, lostAndFound: this.lostAndFound, log: this.log,
      contents: () => this.queries.contents(), records: () => this.queries.records(), referenceDiff: () => referenceDiff(this.metastore),
    };
  }

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
