/**
 * `image export`: images of the store as an OCI image layout (dir or tar) or a `docker save` archive.
 *
 * The store keeps layers extracted, not their original blobs, so each layer tar is written again from its content
 * dir (lib/layers/commit.ts, deterministic). A layer Strata committed comes out byte for byte as it was stored, so
 * its diffID (and, when every layer does, the image id) is unchanged; a layer imported from a tar another tool
 * wrote gets the diffID of Strata's encoding, and the exported config lists the diffIDs of what is in the archive.
 *
 * Atomic: everything is written under `<output>.tmp-<random>` beside the output and renamed into place at the end;
 * a failure deletes it. An existing output is never overwritten.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Duplex, PassThrough, Transform, type TransformCallback, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import { writeLayerTar } from '../layers/commit.js';
import { hexOf, sha256Of, type Digest } from '../layers/digest.js';
import type { LayerStore } from '../layers/layer-store.js';
import { TarWriter } from '../layers/tar-writer.js';
import type { ProgressListener } from '../layers/types.js';
import { explainSpace } from './commit-image.js';
import { configBytesOf, type ImageRecord, type ImageStore } from './image-store.js';
import { normalizeName } from './sources.js';

export type ExportFormat = 'oci' | 'docker';
export type ExportCompression = 'gzip' | 'zstd' | 'none';

export interface ExportOptions {
  format: ExportFormat;
  output: string;
  /** Default: gzip for OCI, none for docker (as `docker save` writes). zstd is OCI only. */
  compression?: ExportCompression;
  onProgress?: ProgressListener;
}

export interface ExportedImage {
  Ref: string;
  Id: Digest;
  /** Config digest of the exported image (differs from Id when a layer's diffID is not reproducible). */
  ExportedId: Digest;
  ManifestDigest: Digest | null;
  DiffIDs: Digest[];
}

export interface ExportResult {
  Output: string;
  Format: ExportFormat;
  Compression: ExportCompression;
  Images: ExportedImage[];
  Bytes: number;
}

const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  layer: { none: 'application/vnd.oci.image.layer.v1.tar', gzip: 'application/vnd.oci.image.layer.v1.tar+gzip', zstd: 'application/vnd.oci.image.layer.v1.tar+zstd' },
} as const;

interface Blob { digest: Digest; size: number; file: string }
interface LayerBlob extends Blob { diffID: Digest; mediaType: string }

export async function exportImages(images: ImageStore, layers: LayerStore, refs: readonly string[], options: ExportOptions, logger: Logger): Promise<ExportResult> {
  const log = logger.child({ component: 'export' });
  if (options.format !== 'oci' && options.format !== 'docker') throw new StrataError('STRATA_BAD_OPTION', `export format "${String(options.format)}" is not oci or docker`);
  const compression = options.compression ?? (options.format === 'oci' ? 'gzip' : 'none');
  if (!['gzip', 'zstd', 'none'].includes(compression)) throw new StrataError('STRATA_BAD_OPTION', `compression "${compression}" is not gzip, zstd or none`);
  if (compression === 'zstd' && options.format === 'docker') throw new StrataError('STRATA_BAD_OPTION', 'docker archives cannot carry zstd layers; use --format oci or --compression gzip');
  if (refs.length === 0) throw new StrataError('STRATA_BAD_OPTION', 'name at least one image to export');
  const output = path.resolve(options.output);
  if ((await lstat(output).catch(() => null)) !== null) throw new StrataError('STRATA_CONFLICT', `${output} already exists; remove it or choose another -o`);
  const parent = await stat(path.dirname(output)).catch(() => null);
  if (parent === null || !parent.isDirectory()) throw new StrataError('STRATA_BAD_DIR', `${path.dirname(output)} is not a directory`);

  const chosen: Array<{ ref: string; image: ImageRecord; names: string[] }> = [];
  for (const ref of refs) {
    const image = await images.resolve(ref);
    const byName = image.names.includes(safeNormalize(ref));
    chosen.push({ ref, image, names: byName ? [safeNormalize(ref)] : image.names });
  }

  const work = `${output}.tmp-${randomBytes(6).toString('hex')}`;
  const layout = options.format === 'oci' && !output.endsWith('.tar') ? work : path.join(work, 'layout');
  await mkdir(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  try {
    const layerBlobs = new Map<Digest, LayerBlob>();
    const totalLayers = new Set(chosen.flatMap((c) => c.image.diffIDs)).size;
    const exported: ExportedImage[] = [];
    const manifests: Array<{ descriptor: Blob & { mediaType: string }; names: string[] }> = [];
    const dockerEntries: Array<{ Config: string; RepoTags: string[] | null; Layers: string[] }> = [];
    const repositories: Record<string, Record<string, string>> = {};
    for (const { ref, image, names } of chosen) {
      const blobs: LayerBlob[] = [];
      for (const [i, chainID] of image.chainIDs.entries()) {
        const stored = image.diffIDs[i]!;
        let blob = layerBlobs.get(stored);
        if (blob === undefined) {
          const dir = await layers.contentDir(chainID);
          const n = layerBlobs.size + 1;
          blob = await writeLayerBlob(layout, dir, compression, (bytes) => options.onProgress?.({ layer: n, layers: totalLayers, bytes, totalBytes: null }));
          layerBlobs.set(stored, blob);
          log.debug({ chainID, stored, diffID: blob.diffID }, 'exported layer');
        }
        blobs.push(blob);
      }
      const diffIDs = blobs.map((b) => b.diffID);
      // Layers that came out as they were stored keep the config's own bytes, and so the image its id.
      const unchanged = diffIDs.every((d, i) => d === image.diffIDs[i]);
      const configBytes = unchanged ? configBytesOf(image) : Buffer.from(JSON.stringify({ ...image.config, rootfs: { ...image.config.rootfs, type: 'layers', diff_ids: diffIDs } }));
      const configBlob = await writeBlobBytes(layout, configBytes);
      let manifestDigest: Digest | null = null;
      if (options.format === 'oci') {
        const manifest = {
          schemaVersion: 2,
          mediaType: MEDIA.ociManifest,
          config: { mediaType: MEDIA.ociConfig, digest: configBlob.digest, size: configBlob.size },
          layers: blobs.map((b) => ({ mediaType: b.mediaType, digest: b.digest, size: b.size })),
        };
        const manifestBlob = await writeBlobBytes(layout, Buffer.from(JSON.stringify(manifest)));
        manifestDigest = manifestBlob.digest;
        manifests.push({ descriptor: { ...manifestBlob, mediaType: MEDIA.ociManifest }, names });
      } else {
        dockerEntries.push({ Config: `blobs/sha256/${hexOf(configBlob.digest)}`, RepoTags: names.length > 0 ? names : null, Layers: blobs.map((b) => `blobs/sha256/${hexOf(b.digest)}`) });
        for (const name of names) {
          const colon = name.lastIndexOf(':');
          (repositories[name.slice(0, colon)] ??= {})[name.slice(colon + 1)] = hexOf(blobs.at(-1)?.digest ?? configBlob.digest);
        }
      }
      exported.push({ Ref: ref, Id: image.id, ExportedId: configBlob.digest, ManifestDigest: manifestDigest, DiffIDs: diffIDs });
    }

    if (options.format === 'oci') {
      const index = {
        schemaVersion: 2,
        mediaType: MEDIA.ociIndex,
        manifests: manifests.flatMap(({ descriptor, names }) => {
          const base = { mediaType: descriptor.mediaType, digest: descriptor.digest, size: descriptor.size };
          if (names.length === 0) return [base];
          return names.map((name) => ({
            ...base,
            annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.slice(name.lastIndexOf(':') + 1) },
          }));
        }),
      };
      await writeFile(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
      await writeFile(path.join(layout, 'index.json'), JSON.stringify(index));
    } else {
      await writeFile(path.join(layout, 'manifest.json'), JSON.stringify(dockerEntries));
      await writeFile(path.join(layout, 'repositories'), JSON.stringify(repositories));
      // docker save also writes an OCI layout beside manifest.json (Docker 25+); readers of either form find theirs.
      await writeFile(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
      await writeFile(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [] }));
    }

    let bytes: number;
    if (layout === work) {
      bytes = await dirBytes(work);
      await rename(work, output);
    } else {
      const archive = path.join(work, 'archive.tar');
      bytes = await packDir(layout, archive);
      await rename(archive, output);
      await rm(work, { recursive: true, force: true });
    }
    log.info({ output, format: options.format, images: exported.length, bytes }, 'exported images');
    return { Output: output, Format: options.format, Compression: compression, Images: exported, Bytes: bytes };
  } catch (err) {
    await rm(work, { recursive: true, force: true });
    throw explainSpace(err, `export to ${output}`, path.dirname(output));
  }
}

/** Writes one layer tar, compressed, hashing it before (diffID) and after (blob digest) compression. */
async function writeLayerBlob(layout: string, dir: string, compression: ExportCompression, onBytes: (bytes: number) => void): Promise<LayerBlob> {
  const tmp = path.join(layout, 'blobs', 'sha256', `.tmp-${randomBytes(6).toString('hex')}`);
  const tarStream = new PassThrough({ highWaterMark: 1 << 20 });
  const diffHash = new Hasher((bytes) => onBytes(bytes));
  const blobHash = new Hasher(() => undefined);
  const compressor = compressorFor(compression);
  const done = pipeline(tarStream, diffHash, compressor.stream, blobHash, createWriteStream(tmp));
  try {
    await writeLayerTar(dir, [], tarStream);
    tarStream.end();
  } catch (err) {
    tarStream.destroy(err as Error);
    await done.catch(() => undefined);
    throw err;
  }
  await done;
  await compressor.checked;
  const digest = blobHash.digest();
  const file = path.join(layout, 'blobs', 'sha256', hexOf(digest));
  await rename(tmp, file);
  return { digest, size: blobHash.bytes, file, diffID: diffHash.digest(), mediaType: MEDIA.layer[compression] };
}

async function writeBlobBytes(layout: string, data: Buffer): Promise<Blob> {
  const digest = sha256Of(data);
  const file = path.join(layout, 'blobs', 'sha256', hexOf(digest));
  await writeFile(file, data);
  return { digest, size: data.length, file };
}

class Hasher extends Transform {
  private readonly hash = createHash('sha256');
  bytes = 0;
  constructor(private readonly report: (bytes: number) => void) {
    super({ highWaterMark: 1 << 20 });
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.report(this.bytes);
    callback(null, chunk);
  }
  digest(): Digest {
    return `sha256:${this.hash.digest('hex')}`;
  }
}

/** gzip in-process; zstd through the `zstd` binary (as lib/layers/compression.ts decompresses it). */
function compressorFor(compression: ExportCompression): { stream: Duplex; checked: Promise<void> } {
  if (compression === 'none') return { stream: new PassThrough({ highWaterMark: 1 << 20 }), checked: Promise.resolve() };
  if (compression === 'gzip') return { stream: createGzip({ level: 6 }), checked: Promise.resolve() };
  const child = spawn('zstd', ['-q', '-c', '-3', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const checked = new Promise<void>((resolve, reject) => {
    child.on('error', (err) => reject(new StrataError('STRATA_UNSUPPORTED', 'cannot run zstd to compress (install the zstd package)', { cause: err })));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new StrataError('STRATA_INTERNAL', `zstd failed: ${stderr.trim() || `exit ${code}`}`))));
  });
  checked.catch(() => undefined);
  return { stream: Duplex.from({ writable: child.stdin, readable: child.stdout }), checked };
}

/** Packs a dir into a tar (sorted, fixed owner and times: the same layout gives the same archive). */
async function packDir(dir: string, archive: string): Promise<number> {
  const out = createWriteStream(archive);
  const tar = new TarWriter(out as Writable);
  const closed = new Promise<void>((resolve, reject) => { out.on('close', resolve); out.on('error', reject); });
  const walk = async (rel: string) => {
    const names = (await readdir(path.join(dir, rel))).sort();
    for (const name of names) {
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const full = path.join(dir, childRel);
      const st = await stat(full);
      if (st.isDirectory()) {
        await tar.entry({ name: childRel, type: 'directory', mode: 0o755, uid: 0, gid: 0, size: 0, mtimeSec: 0n, mtimeNsec: 0n });
        await walk(childRel);
      } else {
        await tar.entry({ name: childRel, type: 'file', mode: 0o644, uid: 0, gid: 0, size: st.size, mtimeSec: 0n, mtimeNsec: 0n }, createReadStream(full, { highWaterMark: 1 << 20 }));
      }
    }
  };
  await walk('');
  await tar.finish();
  out.end();
  await closed;
  return tar.bytes;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir, { recursive: true })) {
    const st = await stat(path.join(dir, name));
    if (st.isFile()) total += st.size;
  }
  return total;
}

function safeNormalize(ref: string): string {
  try {
    return normalizeName(ref);
  } catch {
    return ref;
  }
}
