/**
 * What `strata image …` and `strata layer …` need from the layer and image store. The CLI talks only to this
 * interface: openLocalImageBackend() runs the stores in-process on --root (LevelDB allows one process per
 * database, so this is for when no daemon holds the store); the daemon can offer a remote implementation.
 */
import path from 'node:path';
import { mkdir, stat } from 'node:fs/promises';
import type { Logger } from '../log.js';
import { Metastore } from '../store/metastore.js';
import { LayerStore } from '../layers/layer-store.js';
import { ImageStore, type ImageRecord, type ImageSummary, type RemoveImageResult } from '../images/image-store.js';
import type { Digest } from '../layers/digest.js';
import type { ImportProgress, LayerInfo, ProgressListener } from '../layers/types.js';
import { DEFAULT_SOCKET, StrataClient } from '../api/client.js';
import { RegistryService, type PullOptions, type PullResult, type PushOptions, type PushResult } from '../registry/service.js';
import type { Credentials } from '../registry/credentials.js';
import { exportImages, type ExportOptions, type ExportResult } from '../images/export.js';

/** Imports and prunes may run long on a healthy daemon: no deadline, after a ping that has one (client.ts). */
const LONG = { timeoutMs: 0 };

export const DEFAULT_ROOT = '/var/lib/strata';

export interface ImageBackend {
  importImage(source: string, options: { name?: string; onProgress?: ProgressListener }): Promise<ImageRecord[]>;
  listImages(): Promise<ImageSummary[]>;
  inspectImage(ref: string): Promise<ImageRecord>;
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
  const layers = new LayerStore(metastore, rootDir, logger);
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
  inspectImage(ref: string) { return this.services.images.resolve(ref); }
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
 * The same operations through a running daemon's control API. Paths are sent absolute: the daemon runs on this
 * machine and reads them itself. Progress is not streamed (the daemon logs it).
 */
export class RemoteImageBackend implements ImageBackend {
  constructor(private readonly client: StrataClient) {}

  importImage(source: string, options: { name?: string; onProgress?: ProgressListener }) {
    const body = { Path: path.resolve(source), ...(options.name === undefined ? {} : { Name: options.name }) };
    return options.onProgress === undefined
      ? this.client.request<ImageRecord[]>('POST', '/images/load', body, LONG)
      : this.client.requestWithProgress<ImageRecord[], ImportProgress>('POST', '/images/load', body, options.onProgress);
  }

  listImages() { return this.client.request<ImageSummary[]>('GET', '/images/json'); }
  inspectImage(ref: string) { return this.client.request<ImageRecord>('GET', `/images/${encodeURIComponent(ref)}/json`); }
  removeImage(ref: string) { return this.client.request<RemoveImageResult>('DELETE', `/images/${encodeURIComponent(ref)}`); }
  pruneImages() { return this.client.request<{ deletedImages: Digest[]; deletedLayers: Digest[] }>('POST', '/images/prune', undefined, LONG); }

  importLayer(source: string, options: { parent?: string }) {
    return this.client.request<LayerInfo>('POST', '/layers/import', { Path: path.resolve(source), ...(options.parent === undefined ? {} : { Parent: options.parent }) }, LONG);
  }
  listLayers() { return this.client.request<LayerInfo[]>('GET', '/layers/json'); }
  inspectLayer(ref: string) { return this.client.request<LayerInfo>('GET', `/layers/${encodeURIComponent(ref)}/json`); }
  removeLayer(ref: string) { return this.client.request<{ removed: Digest }>('DELETE', `/layers/${encodeURIComponent(ref)}`); }
  pruneLayers() { return this.client.request<{ deletedLayers: Digest[] }>('POST', '/layers/prune', undefined, LONG); }
  exportImages(refs: string[], options: ExportOptions) {
    const body = { Refs: refs, Format: options.format, Output: path.resolve(options.output), ...(options.compression === undefined ? {} : { Compression: options.compression }) };
    return options.onProgress === undefined
      ? this.client.request<ExportResult>('POST', '/images/export', body, LONG)
      : this.client.requestWithProgress<ExportResult, ImportProgress>('POST', '/images/export', body, options.onProgress);
  }


  pullImage(ref: string, options: PullOptions) {
    return this.client.request<PullResult>('POST', '/images/pull', { Ref: ref, ...(options.platform === undefined ? {} : { Platform: options.platform }) });
  }
  pushImage(ref: string, dest: string | undefined, options: PushOptions) {
    return this.client.request<PushResult>('POST', '/images/push', { Ref: ref, ...(dest === undefined ? {} : { Dest: dest }), ...(options.chunkSize === undefined ? {} : { ChunkSize: options.chunkSize }) });
  }
  // The password travels over the control socket (root only), never on a command line.
  login(registry: string, credentials: Credentials) {
    return this.client.request<{ registry: string }>('POST', '/auth', { ServerAddress: registry, Username: credentials.username, Password: credentials.password });
  }
  logout(registry: string) { return this.client.request<{ registry: string; removed: boolean }>('POST', '/auth/logout', { ServerAddress: registry }); }

  async close(): Promise<void> {}
}

/**
 * The backend the CLI should use: the daemon's when its socket answers (it holds the store's lock), unless --root
 * names a different state dir than the daemon serves; otherwise the store in-process.
 */
export async function openImageBackend(options: { root?: string; socket?: string; registry?: RegistrySettings }, logger: Logger): Promise<ImageBackend> {
  const client = new StrataClient(options.socket ?? process.env.STRATA_SOCKET ?? DEFAULT_SOCKET);
  const root = path.resolve(options.root ?? process.env.STRATA_ROOT ?? DEFAULT_ROOT);
  if (await client.isReachable()) {
    const info = await client.request<{ Root: string }>('GET', '/info');
    if (options.root === undefined || info.Root === root) return new RemoteImageBackend(client);
  }
  return openLocalImageBackend(root, logger, options.registry);
}
