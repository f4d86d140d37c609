/**
 * The image store: images (by id = config digest) with their names, manifest, config and layer chain, on top of
 * the LayerStore. An image holds every layer of its chain as holder `image:<id>`.
 *
 * Import is all or nothing: every layer blob is extracted and verified into layer-tmp first (up to
 * STAGE_CONCURRENCY layers at once, unsynced); then one syncfs makes them durable, one batch writes the layers,
 * the image record, its names and its references (LayerStore.commit), and only then is content renamed into
 * place (finished by recovery after a crash). importStaged is the same commit for layers a caller staged itself.
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import { chainIdsOf, type Digest } from '../layers/digest.js';
import { refOpsFor, type CommitItem, type LayerStore, type StagedLayer } from '../layers/layer-store.js';
import type { LayerContentRecord, ProgressListener } from '../layers/types.js';
import { normalizeName, readDockerArchive, readOciLayout, sniffSource, unpackArchive, validateConfig, type ImageConfig, type SourceImage } from './sources.js';
import { mapLimit } from './map-limit.js';
import { Lock } from '../util/keyed-lock.js';

export interface ImageRecord {
  /** The config digest, as Docker names images. */
  id: Digest;
  names: string[];
  manifestDigest: Digest | null;
  manifest: unknown;
  config: ImageConfig;
  diffIDs: Digest[];
  /** chainIDs, bottom layer first; the last one is what a mount stacks. */
  chainIDs: Digest[];
  /** Bytes of file data over all layers, as of the import (0 for layers it stored packed; see ImageSummary). */
  size: number;
  created: string | null;
  importedAt: string;
  source: 'oci-layout' | 'docker-archive' | 'registry';
  /**
   * The config's bytes as the image came (base64), kept only when JSON.stringify(config) gives other bytes: the
   * id is their digest, so a push or export of the unchanged image sends these (configBytesOf).
   */
  rawConfig?: string;
}

/**
 * The config's bytes whose digest is the image's id: the ones it came with, or JSON.stringify of the parsed config
 * (how Strata writes configs, and what records from before rawConfig existed can offer: for those the digest may
 * differ from the id).
 */
export function configBytesOf(image: Pick<ImageRecord, 'config' | 'rawConfig'>): Buffer {
  return image.rawConfig !== undefined ? Buffer.from(image.rawConfig, 'base64') : Buffer.from(JSON.stringify(image.config));
}

/** What `image inspect` shows: the record (without the raw config's base64), its size counted now (see ImageSummary). */
export type ImageView = Omit<ImageRecord, 'rawConfig'> & { packedLayers: number };

export interface ImageSummary {
  id: Digest;
  names: string[];
  manifestDigest: Digest | null;
  layers: number;
  /** Bytes of file data over the extracted layers, counted now. */
  size: number;
  /** Layers still stored as their blobs (pulled, not used yet): their files are not in `size`. */
  packedLayers: number;
  created: string | null;
}

export interface RemoveImageResult {
  untagged: string[];
  /** The image ids removed (their layers are released; prune deletes unused layers). */
  deleted: Digest[];
}

/** An image whose layers the caller staged (ImageStore.importStaged). */
export interface StagedImage {
  source: ImageRecord['source'];
  configDigest: Digest;
  /** The parsed config; validated again here. */
  config: unknown;
  /** The config's bytes (their digest is configDigest). */
  configBytes: Buffer;
  manifestDigest: Digest | null;
  manifest: unknown;
  /** Names to give the image (normalized here). */
  names: string[];
}

/**
 * Layers an import stages at once: gunzip runs on the threadpool and the untar on the main thread, so two or three
 * layers keep two cores busy, without holding many half-extracted layers in layer-tmp.
 */
const STAGE_CONCURRENCY = 3;

/** Archives unpack into layer-tmp; the bound guards against a zip bomb of a different kind. */
const MAX_ARCHIVE_BYTES = 512 * 2 ** 30;

export class ImageStore {
  private readonly log: Logger;
  private readonly writeLock = new Lock();

  constructor(
    private readonly metastore: Metastore,
    readonly rootDir: string,
    logger: Logger,
    readonly layers: LayerStore,
  ) {
    this.log = logger.child({ component: 'images' });
  }

  /** Drops images whose layers did not survive a crash (LayerStore.recover() must have run). */
  async open(): Promise<void> {
    await this.exclusive(async () => {
      const ops: BatchOp[] = [];
      for (const image of await this.allImages()) {
        const top = image.chainIDs.at(-1);
        if (top === undefined || (await this.layers.has(top))) continue;
        ops.push(...this.deleteOps(image));
        this.log.warn({ id: image.id }, 'dropping image whose layers are gone');
      }
      await this.layers.serialised(() => this.metastore.batch(ops));
    });
  }

  /**
   * Imports every image of an OCI layout dir, a docker-save archive (file or unpacked dir) or a tarred OCI layout.
   * With `name`, the source must hold exactly one image (or one whose ref tag equals name's tag).
   */
  async import(source: string, options: { name?: string; onProgress?: ProgressListener } = {}): Promise<ImageRecord[]> {
    let st;
    try {
      st = await stat(source);
    } catch (err) {
      throw new StrataError('STRATA_NOT_FOUND', `cannot read ${source}: no such file or directory`, { cause: err });
    }
    let unpacked: string | null = null;
    let dir = source;
    try {
      if (st.isFile()) {
        unpacked = path.join(this.layers.tmpDir, `archive-${randomBytes(6).toString('hex')}`);
        await mkdir(unpacked, { mode: 0o700 });
        await unpackArchive(source, unpacked, MAX_ARCHIVE_BYTES);
        dir = unpacked;
      } else if (!st.isDirectory()) {
        throw new StrataError('STRATA_BAD_ARCHIVE', `${source} is neither an image archive nor an OCI layout dir`);
      }
      const kind = await sniffSource(dir);
      if (kind === null) {
        throw new StrataError('STRATA_UNSUPPORTED', `${source} is neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json); for a single layer use "strata layer import"`);
      }
      const found = kind === 'oci-layout' ? await readOciLayout(dir) : await readDockerArchive(dir);
      const chosen = this.choose(found, options.name, source);
      const records: ImageRecord[] = [];
      for (const image of chosen) records.push(await this.importOne(image, kind, options.onProgress));
      return records;
    } finally {
      if (unpacked !== null) await rm(unpacked, { recursive: true, force: true });
    }
  }

  private choose(found: SourceImage[], name: string | undefined, source: string): SourceImage[] {
    if (name === undefined) return found;
    const wanted = normalizeName(name);
    let pick = found;
    if (found.length > 1) {
      const tag = wanted.slice(wanted.lastIndexOf(':') + 1);
      pick = found.filter((img) => img.names.includes(wanted) || img.refTag === tag);
      if (pick.length !== 1) {
        const offered = found.map((img) => img.names[0] ?? img.refTag ?? img.configDigest).join(', ');
        throw new StrataError('STRATA_BAD_OPTION', `${source} holds ${found.length} images (${offered}); none or several match --name ${name}`);
      }
    }
    return pick.map((img) => ({ ...img, names: [wanted] }));
  }

  private async importOne(image: SourceImage, kind: ImageRecord['source'], onProgress?: ProgressListener): Promise<ImageRecord> {
    const staged: StagedLayer[] = [];
    try {
      // Layers stage side by side, each left unsynced: the commit syncs them all with one syncfs before its batch.
      const items = await mapLimit(image.layers, STAGE_CONCURRENCY, async (layer, i): Promise<CommitItem> => {
        if (await this.layers.hasContent(layer.diffID)) return { existingDiffID: layer.diffID };
        const stagedLayer = await this.layers.stageTarFile(layer.file, {
          what: layer.what,
          mediaType: layer.mediaType,
          expectDigest: layer.digest,
          expectSize: layer.size,
          expectDiffID: layer.diffID,
          sync: false,
          onProgress: (bytes) => onProgress?.({ layer: i + 1, layers: image.layers.length, bytes, totalBytes: layer.size ?? null }),
        });
        staged.push(stagedLayer);
        return { staged: stagedLayer };
      });
      return await this.commitImage(image, image.layers.map((l) => l.diffID), items, kind);
    } catch (err) {
      for (const s of staged) await this.layers.discard(s);
      throw err;
    }
  }

  /**
   * Commits an image whose layers the caller staged itself (a registry pull extracts each layer while it
   * downloads it, lib/registry/service.ts). `items[i]` is layer i of the config's diff_ids: staged content
   * verified against that diffID, or a diffID the store holds. All or nothing, as import: from this call on the
   * staged layers are the store's, committed or else discarded.
   */
  async importStaged(image: StagedImage, items: readonly CommitItem[]): Promise<ImageRecord> {
    try {
      const config = validateConfig(image.config, `config ${image.configDigest}`);
      const diffIDs = config.rootfs.diff_ids;
      if (items.length !== diffIDs.length) {
        throw new StrataError('STRATA_BAD_ARCHIVE', `config ${image.configDigest} lists ${diffIDs.length} diff_ids for ${items.length} layers`);
      }
      items.forEach((item, i) => {
        const diffID = 'staged' in item ? item.staged.diffID : item.existingDiffID;
        if (diffID !== diffIDs[i]) throw new StrataError('STRATA_INTERNAL', `layer ${i + 1} was staged as ${diffID}, the config says ${diffIDs[i]}`);
      });
      const source = { configDigest: image.configDigest, config, configBytes: image.configBytes, manifestDigest: image.manifestDigest, manifest: image.manifest, names: image.names.map(normalizeName) };
      return await this.commitImage(source, diffIDs, items, image.source);
    } catch (err) {
      for (const item of items) if ('staged' in item) await this.layers.discard(item.staged);
      throw err;
    }
  }

  /** The commit half of an import: one batch writes the layers, the image record, its names and references. */
  private async commitImage(image: Omit<SourceImage, 'layers'>, diffIDs: Digest[], items: readonly CommitItem[], kind: ImageRecord['source']): Promise<ImageRecord> {
    const chainIDs = chainIdsOf(diffIDs);
    const holder = holderOf(image.configDigest);
    return this.exclusive(async () => {
      const id = image.configDigest;
      const existing = await this.metastore.get<ImageRecord>('images', id);
      const ops: BatchOp[] = [];
      for (const name of image.names) {
        const owner = await this.metastore.get<Digest>('imageNames', name);
        if (owner !== undefined && owner !== id) {
          // The name moves to the new image (like docker tag); the old image stays, addressable by id.
          const other = await this.metastore.get<ImageRecord>('images', owner);
          if (other !== undefined) ops.push({ type: 'put', sublevel: 'images', key: owner, value: { ...other, names: other.names.filter((n) => n !== name) } });
        }
        ops.push({ type: 'put', sublevel: 'imageNames', key: name, value: id });
      }
      let size = 0;
      for (const diffID of diffIDs) {
        const s = items.find((x): x is { staged: StagedLayer } => 'staged' in x && x.staged.diffID === diffID);
        size += s !== undefined ? s.staged.size : (await this.layers.getContent(diffID)).size;
      }
      const record: ImageRecord = {
        id,
        names: [...new Set([...(existing?.names ?? []), ...image.names])].sort(),
        manifestDigest: image.manifestDigest ?? existing?.manifestDigest ?? null,
        manifest: image.manifest,
        config: image.config,
        diffIDs,
        chainIDs,
        size,
        created: typeof image.config.created === 'string' ? image.config.created : null,
        importedAt: existing?.importedAt ?? new Date().toISOString(),
        source: kind,
      };
      if (!configBytesOf(record).equals(image.configBytes)) record.rawConfig = image.configBytes.toString('base64');
      ops.push({ type: 'put', sublevel: 'images', key: id, value: record });
      ops.push(...refOpsFor(chainIDs, holder, 'put'));
      await this.layers.commit(null, items, () => ops);
      this.log.info({ id, names: record.names, layers: chainIDs.length }, 'imported image');
      return record;
    });
  }

  // ---------------------------------------------------------------- queries

  /**
   * Resolves an image reference: a name (`busybox`, `busybox:1.36`), `name@sha256:<manifest digest>`,
   * a manifest digest, an image id, or a prefix of an id (at least 4 hex digits).
   */
  async resolve(ref: string): Promise<ImageRecord> {
    const at = ref.indexOf('@sha256:');
    if (at > 0 || ref.startsWith('sha256:') || /^[0-9a-f]{4,64}$/.test(ref)) {
      const digest = at > 0 ? ref.slice(at + 1) : ref.startsWith('sha256:') ? ref : `sha256:${ref}`;
      const all = await this.allImages();
      const byManifest = all.filter((img) => img.manifestDigest === digest);
      if (byManifest.length === 1) return byManifest[0]!;
      if (at < 0) {
        const byId = all.filter((img) => img.id.startsWith(digest));
        if (byId.length === 1) return byId[0]!;
        if (byId.length > 1) throw new StrataError('STRATA_BAD_OPTION', `image id ${ref} is ambiguous (${byId.length} images match)`);
      }
      throw new StrataError('STRATA_NOT_FOUND', `no image ${ref}`);
    }
    let name: string;
    try {
      name = normalizeName(ref);
    } catch {
      throw new StrataError('STRATA_BAD_OPTION', `"${ref}" is not an image name or id`);
    }
    const id = await this.metastore.get<Digest>('imageNames', name);
    const image = id === undefined ? undefined : await this.metastore.get<ImageRecord>('images', id);
    if (image === undefined) throw new StrataError('STRATA_NOT_FOUND', `no image ${ref}`);
    return image;
  }

  async list(): Promise<ImageSummary[]> {
    const contents = new Map<Digest, LayerContentRecord>();
    const out: ImageSummary[] = [];
    for (const img of await this.allImages()) {
      const { size, packedLayers } = await this.sizeNow(img, contents);
      out.push({ id: img.id, names: img.names, manifestDigest: img.manifestDigest, layers: img.chainIDs.length, size, packedLayers, created: img.created });
    }
    return out;
  }

  /** `image inspect`: the record, with `size` and `packedLayers` as the layers are now. */
  async inspect(ref: string): Promise<ImageView> {
    const { rawConfig: _rawConfig, ...image } = await this.resolve(ref);
    return { ...image, ...(await this.sizeNow(image, new Map())) };
  }

  /**
   * Bytes of file data over the image's extracted layers, and how many are still packed: counted from the content
   * records, since a packed layer's size is only known once it is extracted (`contents` caches them across images).
   */
  private async sizeNow(image: ImageRecord, contents: Map<Digest, LayerContentRecord>): Promise<{ size: number; packedLayers: number }> {
    let size = 0;
    let packedLayers = 0;
    for (const diffID of image.diffIDs) {
      let content = contents.get(diffID);
      if (content === undefined) contents.set(diffID, content = await this.layers.getContent(diffID));
      size += content.size;
      if (content.packed === true) packedLayers += 1;
    }
    return { size, packedLayers };
  }

  // ---------------------------------------------------------------- removal

  /**
   * `image rm`: a name untags; the image goes (releasing its layers) once no name is left. An id removes the
   * image with all its names. Layers are deleted by prune, not here.
   */
  async remove(ref: string): Promise<RemoveImageResult> {
    return this.exclusive(async () => {
      const image = await this.resolve(ref);
      const byName = image.names.includes(safeNormalize(ref));
      const untagged = byName ? [safeNormalize(ref)] : image.names;
      const remaining = image.names.filter((n) => !untagged.includes(n));
      const ops: BatchOp[] = untagged.map((name) => ({ type: 'del' as const, sublevel: 'imageNames' as const, key: name }));
      if (remaining.length > 0) {
        ops.push({ type: 'put', sublevel: 'images', key: image.id, value: { ...image, names: remaining } });
        await this.layers.serialised(() => this.metastore.batch(ops));
        return { untagged, deleted: [] };
      }
      ops.push(...this.deleteOps(image).filter((op) => op.sublevel !== 'imageNames'));
      // In the layer store's write queue: record and references change together, never between a check and a write.
      await this.layers.serialised(() => this.metastore.batch(ops));
      this.log.info({ id: image.id }, 'removed image');
      return { untagged, deleted: [image.id] };
    });
  }

  /** Removes images without a name, then every layer nothing uses. */
  async prune(): Promise<{ deletedImages: Digest[]; deletedLayers: Digest[] }> {
    const deletedImages = await this.exclusive(async () => {
      const dangling = (await this.allImages()).filter((img) => img.names.length === 0);
      await this.layers.serialised(() => this.metastore.batch(dangling.flatMap((img) => this.deleteOps(img))));
      return dangling.map((img) => img.id);
    });
    return { deletedImages, deletedLayers: await this.layers.prune() };
  }

  private deleteOps(image: ImageRecord): BatchOp[] {
    return [
      { type: 'del', sublevel: 'images', key: image.id },
      ...image.names.map((name) => ({ type: 'del' as const, sublevel: 'imageNames' as const, key: name })),
      ...refOpsFor(image.chainIDs, holderOf(image.id), 'del'),
    ];
  }

  private async allImages(): Promise<ImageRecord[]> {
    return (await this.metastore.entries<ImageRecord>('images')).map(([, v]) => v);
  }

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.writeLock.run(work);
  }
}

/** The reference holder name of an image. */
export function holderOf(imageId: Digest): string {
  return `image:${imageId}`;
}

function safeNormalize(ref: string): string {
  try {
    return normalizeName(ref);
  } catch {
    return ref;
  }
}
