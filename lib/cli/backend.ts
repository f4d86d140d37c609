/**
 * Where the CLI's image and layer commands run: through a running daemon's control API (RemoteImageBackend), or
 * in-process on the store (LocalImageBackend, lib/images/service.ts) when no daemon holds it.
 */
import path from 'node:path';
import type { ImageRecord, ImageSummary, ImageView, RemoveImageResult } from '../images/image-store.js';
import type { Digest } from '../layers/digest.js';
import type { ImportProgress, LayerInfo, ProgressListener } from '../layers/types.js';
import { DEFAULT_ROOT, DEFAULT_SOCKET, StrataClient } from '../api/client.js';
import type { PullOptions, PullResult, PushOptions, PushResult } from '../registry/service.js';
import type { Credentials } from '../registry/credentials.js';
import type { ExportOptions, ExportResult } from '../images/export.js';
import type { ImageBackend, RegistrySettings } from '../images/service.js';

/** Imports and prunes may run long on a healthy daemon: no deadline, after a ping that has one (client.ts). */
const LONG = { timeoutMs: 0 };

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
  inspectImage(ref: string) { return this.client.request<ImageView>('GET', `/images/${encodeURIComponent(ref)}/json`); }
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
 * names a different state dir than the daemon serves; otherwise the store in-process. The store's modules (LevelDB,
 * the layer store, the logger) are loaded only then: a command served by the daemon starts without them.
 */
export async function openImageBackend(options: { root?: string; socket?: string; registry?: RegistrySettings }): Promise<ImageBackend> {
  const client = new StrataClient(options.socket ?? process.env.STRATA_SOCKET ?? DEFAULT_SOCKET);
  const root = path.resolve(options.root ?? process.env.STRATA_ROOT ?? DEFAULT_ROOT);
  if (await client.isReachable()) {
    const info = await client.request<{ Root: string }>('GET', '/info');
    if (options.root === undefined || info.Root === root) return new RemoteImageBackend(client);
  }
  const [{ openLocalImageBackend }, { createLogger }] = await Promise.all([import('../images/service.js'), import('../log.js')]);
  return openLocalImageBackend(root, createLogger({ name: 'strata' }), options.registry);
}
