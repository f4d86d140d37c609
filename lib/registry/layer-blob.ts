/**
 * A stored layer as a gzip blob for push. The store keeps layers extracted, not their blobs, so the tar is written
 * again from the content dir by the same deterministic writer as `mount commit` and `image export`
 * (lib/layers/commit.ts): a layer Strata committed comes out byte for byte as committed (same diffID), and any
 * layer always gives the same bytes, so a second push finds it with HEAD.
 */
import { createWriteStream } from 'node:fs';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { constants as zlibConstants, createGzip } from 'node:zlib';
import { writeLayerTar } from '../layers/commit.js';
import { HashingStream, type Digest } from '../layers/digest.js';

export interface LayerBlob {
  /** sha256 of the uncompressed tar. */
  diffID: Digest;
  /** sha256 and size of the gzip blob written. */
  digest: Digest;
  size: number;
  mediaType: string;
}

/** Tars the content dir `dir` into a gzip blob at `outFile`, hashing before (diffID) and after compression. */
export async function writeLayerBlob(dir: string, outFile: string, what: string): Promise<LayerBlob> {
  const tar = new PassThrough({ highWaterMark: 1 << 20 });
  const tarHash = new HashingStream(Number.MAX_SAFE_INTEGER, `${what} (tar)`);
  const blobHash = new HashingStream(Number.MAX_SAFE_INTEGER, what);
  const done = pipeline(tar, tarHash, createGzip({ level: zlibConstants.Z_DEFAULT_COMPRESSION }), blobHash, createWriteStream(outFile, { mode: 0o600 }));
  try {
    await writeLayerTar(dir, [], tar);
    tar.end();
  } catch (err) {
    tar.destroy(err as Error);
    await done.catch(() => undefined);
    throw err;
  }
  await done;
  return { diffID: tarHash.digest, digest: blobHash.digest, size: blobHash.bytes, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' };
}
