/**
 * The layer store as the mount service sees it (lib/mounts/sources.ts LayerProvider): image or layer references
 * resolve to content dirs, and a mount holds a reference on each layer it stacks.
 */
import type { LayerProvider, ResolvedSource } from '../mounts/sources.js';
import { StrataError } from '../errors.js';
import { isDigest, type Digest } from '../layers/digest.js';
import type { LayerStore } from '../layers/layer-store.js';
import type { BatchOp } from '../store/metastore.js';
import type { ImageStore } from './image-store.js';

export class StoreLayerProvider implements LayerProvider {
  constructor(private readonly images: ImageStore, private readonly layers: LayerStore) {}

  async resolve(reference: string): Promise<Omit<ResolvedSource, 'reference'>> {
    let kind: 'image' | 'layer' = 'image';
    let top: Digest | null;
    let imageId: { imageId?: string } = {};
    try {
      const image = await this.images.resolve(reference);
      top = image.chainIDs.at(-1) ?? null;
      imageId = { imageId: image.id };
    } catch (err) {
      if (!(err instanceof StrataError) || (err.code !== 'STRATA_NOT_FOUND' && err.code !== 'STRATA_BAD_OPTION')) throw err;
      kind = 'layer';
      top = await this.layers.resolve(reference);
    }
    if (top === null) return { kind, lowerDirs: [], layerIds: [], ...imageId };
    const chain = await this.layers.chain(top);
    return { kind, lowerDirs: await this.layers.lowerDirs(top), layerIds: chain.map((l) => l.chainID), ...imageId };
  }

  async writeWithReferences(layerIds: string[], user: string, type: 'put' | 'del', ops: BatchOp[]): Promise<void> {
    await this.layers.writeWithReferences(type === 'put' ? this.digests(layerIds) : layerIds.filter(isDigest), user, type, ops);
  }

  private digests(layerIds: string[]): Digest[] {
    return layerIds.map((id) => {
      if (!isDigest(id)) throw new StrataError('STRATA_BAD_REQUEST', `"${id}" is not a layer chainID`);
      return id;
    });
  }

  async acquire(layerIds: string[], user: string): Promise<void> {
    const ids = layerIds.map((id) => {
      if (!isDigest(id)) throw new StrataError('STRATA_BAD_REQUEST', `"${id}" is not a layer chainID`);
      return id;
    });
    await this.layers.acquireLayers(ids, user);
  }

  async release(layerIds: string[], user: string): Promise<void> {
    await this.layers.releaseLayers(layerIds.filter(isDigest), user);
  }
}
