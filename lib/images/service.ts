/**
 * The image and layer services of one state dir: the stores opened and recovered (openImageServices), and the
 * ImageBackend interface that `strata image …` / `strata layer …` and the daemon's API both speak.
 * LocalImageBackend runs it in-process on the stores (the daemon's, or the CLI's when no daemon holds the store:
 * LevelDB allows one process per database); lib/cli/backend.ts adds the remote implementation over the API.
 */
import path from 'node:path';
import { mkdir, stat } from 'node:fs/promises';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import { Metastore } from '../store/metastore.js';
import { LayerStore } from '../layers/layer-store.js';
import type { GunzipChoice } from '../layers/compression.js';
import { ImageStore, type ImageRecord, type ImageSummary, type ImageView, type RemoveImageResult } from './image-store.js';
import type { Digest } from '../layers/digest.js';
import type { LayerInfo, ProgressListener } from '../layers/types.js';
import { RegistryService, type PullOptions, type PullResult, type PushOptions, type PushResult } from '../registry/service.js';
import type { Credentials } from '../registry/credentials.js';
import { exportImages, type ExportOptions, type ExportResult } from './export.js';

export { DEFAULT_ROOT } from '../api/client.js';

export interface ImageBackend {
  importImage(source: string, options: { name?: string; onProgress?: ProgressListener }): Promise<ImageRecord[]>;
  listImages(): Promise<ImageSummary[]>;
  inspectImage(ref: string): Promise<ImageView>;
  removeImage(ref: string): Promise<RemoveImageResult>;
  /** Removes untagged images, then unreferenced layers. */
  pruneImages(): Promise<{ deletedImages: Digest[]; deletedLayers: Digest[] }>;

  /** Imports a layer tar (plain, gzip, zstd) or a directory, optionally on top of `parent` (a layer id). */
  importLayer(source: string, options: { parent?: string; onProgress?: ProgressListener }): Promise<LayerInfo>;
  listLayers(): Promise<LayerInfo[]>;
  inspectLayer(ref: string): Promise<LayerInfo>;
  removeLayer(ref: string): Promise<{ removed: Digest }>;
  pruneLayers(): Promise<{ deletedLayers: Digest[] }>;

  /** Registry transfers (lib/registry): pull REF into the store, push a stored image to DEST (default: its name). */
  pullImage(ref: string, options: PullOptions): Promise<PullResult>;
  pushImage(ref: string, dest: string | undefined, options: PushOptions): Promise<PushResult>;
  /** Checks the credentials with the registry, then stores them (0600) in the state dir. */
  login(registry: string, credentials: Credentials): Promise<{ registry: string }>;
  logout(registry: string): Promise<{ registry: string; removed: boolean }>;
  /** Writes images as an OCI layout (dir, or tar when the output ends in .tar) or a docker save archive. */
  exportImages(refs: string[], options: ExportOptions): Promise<ExportResult>;

  close(): Promise<void>;
}

/** Settings for registry access, from the daemon config or the CLI's flags. */
export interface RegistrySettings {
  insecureRegistries?: readonly string[];
  /** A credentials file to use instead of <root>/registry-auth.json. */
  authFile?: string;
}

/** The stores of one state dir, opened and recovered; what a daemon hosts. */
export interface ImageServices {
  layers: LayerStore;
  images: ImageStore;
  registry: RegistryService;
  logger: Logger;
}

/** Opens the layer and image store on an already-open metastore, running crash recovery first. */
export async function openImageServices(metastore: Metastore, rootDir: string, logger: Logger, registry: RegistrySettings = {}): Promise<ImageServices> {
  const layers = new LayerStore(metastore, rootDir, logger, { gunzip: gunzipChoice(process.env.STRATA_GUNZIP) });
  await layers.open();
  const images = new ImageStore(metastore, rootDir, logger, layers);
  await images.open();
  return { layers, images, logger, registry: new RegistryService({ metastore, images, layers, rootDir, logger, ...registry }) };
}

/** An in-process backend on `rootDir` (its own LevelDB at <root>/db). */
export async function openLocalImageBackend(rootDir: string, logger: Logger, registry: RegistrySettings = {}): Promise<ImageBackend> {
  const root = path.resolve(rootDir);
  await mkdir(root, { recursive: true, mode: 0o711 });
  const metastore = await Metastore.open(path.join(root, 'db'), logger);
  try {
    const services = await openImageServices(metastore, root, logger, registry);
    return new LocalImageBackend(metastore, services);
  } catch (err) {
    await metastore.close();
    throw err;
  }
}

export class LocalImageBackend implements ImageBackend {
  constructor(private readonly metastore: Metastore, private readonly services: ImageServices) {}

  importImage(source: string, options: { name?: string; onProgress?: ProgressListener }) {
    return this.services.images.import(path.resolve(source), options);
  }
  listImages() { return this.services.images.list(); }
  inspectImage(ref: string) { return this.services.images.inspect(ref); }
  removeImage(ref: string) { return this.services.images.remove(ref); }
  pruneImages() { return this.services.images.prune(); }

  async importLayer(source: string, options: { parent?: string; onProgress?: ProgressListener }): Promise<LayerInfo> {
    const { layers } = this.services;
    const parent = options.parent === undefined ? null : await layers.resolve(options.parent);
    const resolved = path.resolve(source);
    const isDir = await stat(resolved).then((s) => s.isDirectory(), () => false);
    return isDir
      ? layers.importDirectory(resolved, { parent, onProgress: options.onProgress })
      : layers.importTarFile(resolved, { parent, onProgress: options.onProgress });
  }
  listLayers() { return this.services.layers.list(); }
  async inspectLayer(ref: string) { return this.services.layers.inspect(await this.services.layers.resolve(ref)); }
  async removeLayer(ref: string) {
    const chainID = await this.services.layers.resolve(ref);
    await this.services.layers.remove(chainID);
    return { removed: chainID };
  }
  async pruneLayers() { return { deletedLayers: await this.services.layers.prune() }; }
  exportImages(refs: string[], options: ExportOptions) {
    return exportImages(this.services.images, this.services.layers, refs, { ...options, output: path.resolve(options.output) }, this.services.logger);
  }

  pullImage(ref: string, options: PullOptions) { return this.services.registry.pull(ref, options); }
  pushImage(ref: string, dest: string | undefined, options: PushOptions) { return this.services.registry.push(ref, dest, options); }
  login(registry: string, credentials: Credentials) { return this.services.registry.login(registry, credentials); }
  logout(registry: string) { return this.services.registry.logout(registry); }

  async close(): Promise<void> {
    await this.metastore.close();
  }
}

/**
 * STRATA_GUNZIP picks the gzip decoder of layer imports and pulls: `auto` (default: igzip when installed, else
 * node:zlib), `zlib` or `igzip`. For comparing the two and for tests; the default is the fast one.
 */
function gunzipChoice(value: string | undefined): GunzipChoice {
  if (value === undefined || value === '') return 'auto';
  if (value === 'auto' || value === 'zlib' || value === 'igzip') return value;
  throw new StrataError('STRATA_BAD_OPTION', `STRATA_GUNZIP="${value}" is not auto, zlib or igzip`);
}
