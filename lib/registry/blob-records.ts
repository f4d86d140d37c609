/**
 * What Strata remembers about blobs in registries, in the `registry` sublevel (Docker keeps the same in its
 * distribution metadata):
 *  - `blob|<digest>`: a blob's size, media type, the diffID of its tar, and the `registry/repository`s it was
 *    pulled from or pushed to (candidates for a cross-repository mount);
 *  - `export|<diffID>`: the digest of the blob a stored layer was last tarred into for a push, so a second push
 *    of the same layer needs no new tar to know what to HEAD.
 * It is a cache: every use is checked with the registry (HEAD, or the mount answer), so a stale record costs one
 * request, never a wrong image. Records are only added, after the transfer they describe succeeded.
 */
import type { Metastore, BatchOp } from '../store/metastore.js';
import type { Digest } from '../layers/digest.js';

export interface BlobRecord {
  digest: Digest;
  size: number;
  mediaType: string;
  /** sha256 of the blob's uncompressed tar (for layers). */
  diffID?: Digest;
  /** `registry/repository` names that hold the blob, most recent last. */
  repos: string[];
}

/** Repositories remembered per blob; the oldest are forgotten. */
const MAX_REPOS = 8;

/** A blob to remember; `exportedFrom` names the stored layer's diffID when Strata made the blob by tarring it. */
export type RememberedBlob = Omit<BlobRecord, 'repos'> & { exportedFrom?: Digest };

export class BlobRecords {
  constructor(private readonly metastore: Metastore) {}

  async get(digest: Digest): Promise<BlobRecord | undefined> {
    return this.metastore.get<BlobRecord>('registry', `blob|${digest}`);
  }

  async exportedAs(diffID: Digest): Promise<BlobRecord | undefined> {
    const digest = await this.metastore.get<Digest>('registry', `export|${diffID}`);
    return digest === undefined ? undefined : this.get(digest);
  }

  /** Records that `repo` holds each blob (and, for exported layers, which diffID they were made from). */
  async remember(repo: string, blobs: readonly RememberedBlob[]): Promise<void> {
    const ops: BatchOp[] = [];
    for (const blob of blobs) {
      const old = await this.get(blob.digest);
      const repos = [...(old?.repos ?? []).filter((r) => r !== repo), repo].slice(-MAX_REPOS);
      const { exportedFrom, ...rest } = blob;
      ops.push({ type: 'put', sublevel: 'registry', key: `blob|${blob.digest}`, value: { ...rest, diffID: rest.diffID ?? old?.diffID, repos } satisfies BlobRecord });
      if (exportedFrom !== undefined) ops.push({ type: 'put', sublevel: 'registry', key: `export|${exportedFrom}`, value: blob.digest });
    }
    await this.metastore.batch(ops);
  }
}
