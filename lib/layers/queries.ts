/**
 * What the layer store holds: read-only queries on the layer records (chainID -> diffID, parent, depth), the
 * content records (diffID -> dirName, sizes) and the references, and the paths a mount stacks. Nothing here writes,
 * so none of it takes the store's write lock; a reader may see a commit or removal just before or just after.
 */
import path from 'node:path';
import { StrataError } from '../errors.js';
import type { Metastore } from '../store/metastore.js';
import type { Digest } from './digest.js';
import type { LayerContentRecord, LayerInfo, LayerRecord, LayerRefRecord } from './types.js';

export class LayerQueries {
  constructor(private readonly metastore: Metastore, private readonly layersDir: string) {}

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

  async getContent(diffID: Digest): Promise<LayerContentRecord> {
    const content = await this.metastore.get<LayerContentRecord>('layerContents', diffID);
    if (content === undefined) throw new StrataError('STRATA_STORE_CORRUPT', `no content record for diffID ${diffID}`);
    return content;
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
    const children = (await this.records()).filter((r) => r.parent === chainID).map((r) => r.chainID);
    return this.toInfo(record, content, await this.holders(chainID), children);
  }

  async list(): Promise<LayerInfo[]> {
    const records = await this.records();
    const contents = new Map((await this.contents()).map((c) => [c.diffID, c]));
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

  /** Holders of one layer (directly or through a chain above it), sorted. */
  async holders(chainID: Digest): Promise<string[]> {
    return (await this.metastore.entries<LayerRefRecord>('refs', `${chainID}|`)).map(([, r]) => r.holder).sort();
  }

  async records(): Promise<LayerRecord[]> {
    return (await this.metastore.entries<LayerRecord>('layers')).map(([, v]) => v);
  }

  async contents(): Promise<LayerContentRecord[]> {
    return (await this.metastore.entries<LayerContentRecord>('layerContents')).map(([, v]) => v);
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
      packed: content.packed === true,
      holders,
      children,
    };
  }
}
