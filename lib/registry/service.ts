/**
 * Pull and push between the image store and OCI registries, and the credentials for them (login/logout).
 *
 * Pull lifecycle (a failed pull leaves no image, layer or record visible):
 *  1. manifest (an index narrows to one platform), then the config: both verified by digest in memory;
 *  2. layers the store lacks (by diffID) are downloaded 3 at a time into <root>/registry-cache/blobs/, each
 *     verified against its digest and size before it gets its final name; an interrupted download resumes with
 *     Range, in this pull or the next one;
 *  3. once every blob is there (each fdatasynced as it completed), each is staged packed (renamed into layer-tmp,
 *     LayerStore.stagePackedBlob), and ImageStore.importStaged fsyncs layer-tmp and commits the layers and the
 *     image in one batch (its all-or-nothing path); on a failure before the stage the cache keeps what was
 *     downloaded.
 *     Layers the store already has are never fetched.
 * A pulled layer is stored as its blob, as `skopeo copy` stores it, and extracted on first use (a mount, an
 * export, a push that must tar it again) or by stratad in the background; the extraction checks the diffID the
 * config gives (see LayerStore, "Packed layers").
 * Push: the store keeps extracted layers, not blobs. A layer whose original blob the registry has (HEAD) or can
 * mount from another repository is not sent; any other layer is tarred again by the deterministic writer of
 * commit and export (lib/layers/commit.ts) and uploaded; the config then names the diffIDs of what was sent.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metastore } from '../store/metastore.js';
import { configBytesOf, type ImageRecord, type ImageStore } from '../images/image-store.js';
import { DEFAULT_LIMITS, LAYER_MEDIA_TYPES, type CommitItem, type LayerStore, type StagedLayer } from '../layers/layer-store.js';
import { mapLimit } from '../images/map-limit.js';
import { hexOf, parseDigest, sha256Of, type Digest } from '../layers/digest.js';
import { BlobRecords, type RememberedBlob } from './blob-records.js';
import { MAX_MANIFEST_BYTES, MEDIA_TYPES, RegistryClient, type Descriptor } from './client.js';
import { CredentialStore, type Credentials } from './credentials.js';
import { writeLayerBlob } from './layer-blob.js';
import { formatReference, parseReference, type ImageReference } from './reference.js';

/** Image configs larger than this are refused, as on import. */
const MAX_CONFIG_BYTES = 8 * 2 ** 20;
/** Leftovers of pulls and pushes that crashed are deleted once this old. */
const STALE_MS = 24 * 3600 * 1000;
/** Partial or complete blob downloads nobody came back for are deleted once this old. */
const CACHE_MS = 7 * 24 * 3600 * 1000;

export const DEFAULT_CONCURRENCY = 3;
/** Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size. */
export const DEFAULT_CHUNK_SIZE = 64 * 2 ** 20;

export type TransferPhase = 'waiting' | 'exists' | 'mounted' | 'downloading' | 'tarring' | 'uploading' | 'extracting' | 'done';

export interface TransferProgress {
  /** 1-based layer index (bottom first) and the count; 0 for the config and manifest. */
  layer: number;
  layers: number;
  digest: string;
  phase: TransferPhase;
  bytes: number;
  totalBytes: number | null;
}

export type TransferListener = (progress: TransferProgress) => void;

export interface PullOptions {
  /** `os/arch[/variant]`; default linux and this machine's architecture. */
  platform?: string;
  concurrency?: number;
  onProgress?: TransferListener;
}

export interface PullResult {
  reference: string;
  id: Digest;
  names: string[];
  manifestDigest: Digest;
  layers: Array<{ digest: Digest; diffID: Digest; size: number; action: 'present' | 'downloaded' }>;
  /** Blob bytes that crossed the network in this pull. */
  downloadedBytes: number;
}

export interface PushOptions {
  concurrency?: number;
  chunkSize?: number;
  onProgress?: TransferListener;
}

export interface PushResult {
  reference: string;
  manifestDigest: Digest;
  configDigest: Digest;
  layers: Array<{ digest: Digest; diffID: Digest; size: number; action: 'present' | 'mounted' | 'uploaded' }>;
  uploadedBytes: number;
}

export interface RegistryServiceOptions {
  metastore: Metastore;
  images: ImageStore;
  layers: LayerStore;
  rootDir: string;
  logger: Logger;
  /** Registries (host or host:port) that may be spoken to over plain HTTP besides loopback. */
  insecureRegistries?: readonly string[];
  /** The credentials file; default <root>/registry-auth.json. */
  authFile?: string;
}

interface PlatformSpec { os: string; architecture: string; variant?: string }

export class RegistryService {
  readonly credentials: CredentialStore;
  readonly cacheDir: string;
  private readonly log: Logger;
  private readonly records: BlobRecords;
  private readonly insecure: readonly string[];
  /** One download per blob at a time in this process (two pulls sharing a layer wait for each other). */
  private readonly downloads = new Map<Digest, Promise<unknown>>();

  constructor(private readonly options: RegistryServiceOptions) {
    this.log = options.logger.child({ component: 'registry' });
    this.records = new BlobRecords(options.metastore);
    this.insecure = options.insecureRegistries ?? [];
    this.credentials = new CredentialStore(options.authFile ?? path.join(options.rootDir, 'registry-auth.json'));
    this.cacheDir = path.join(options.rootDir, 'registry-cache');
  }

  // ---------------------------------------------------------------- login

  /** Checks the credentials against the registry, then stores them. */
  async login(registryText: string, credentials: Credentials): Promise<{ registry: string }> {
    const registry = registryHost(registryText);
    // Only the credentials being tried are offered, not stored ones.
    const client = new RegistryClient(registry, parseReference(`${registry}/probe`).apiHost, `login ${registry}`, {
      credentials: { get: async () => credentials } as unknown as CredentialStore,
      insecureRegistries: this.insecure,
      logger: this.options.logger,
    });
    try {
      await client.ping();
    } finally {
      client.close();
    }
    await this.credentials.set(registry, credentials);
    this.log.info({ registry, user: credentials.username }, 'logged in');
    return { registry };
  }

  async logout(registryText: string): Promise<{ registry: string; removed: boolean }> {
    const registry = registryHost(registryText);
    const removed = await this.credentials.remove(registry);
    return { registry, removed };
  }

  // ---------------------------------------------------------------- pull

  async pull(refText: string, options: PullOptions = {}): Promise<PullResult> {
    const started = Date.now();
    const ref = parseReference(refText);
    const what = `pull ${formatReference(ref)}`;
    const platform = parsePlatform(options.platform);
    const client = this.client(ref, what);
    client.setScopes([`repository:${ref.repository}:pull`]);
    await this.prepareCache();
    try {
      let manifest = await client.getManifest(ref.repository, ref.digest ?? ref.tag!);
      if (manifest.mediaType === MEDIA_TYPES.ociIndex || manifest.mediaType === MEDIA_TYPES.dockerList) {
        const chosen = choosePlatform(manifest.bytes, platform, what);
        manifest = await client.getManifest(ref.repository, chosen.digest);
        if (manifest.bytes.length !== chosen.size) throw new StrataError('STRATA_DIGEST_MISMATCH', `${what}: manifest ${chosen.digest} has ${manifest.bytes.length} bytes, the index says ${chosen.size}`);
      }
      const { config: configDesc, layers: layerDescs } = checkManifest(manifest.bytes, manifest.mediaType, `${what}: manifest ${manifest.digest}`);
      // A registry's size claims are checked before any byte is written: the store would refuse such a blob anyway.
      for (const d of layerDescs) {
        if (d.size > DEFAULT_LIMITS.maxBlobBytes) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: layer ${d.digest} claims ${d.size} bytes, above the ${DEFAULT_LIMITS.maxBlobBytes}-byte limit`);
      }
      const configBytes = await client.getJsonBlob(ref.repository, configDesc, MAX_CONFIG_BYTES, 'config');
      const diffIDs = diffIdsOf(configBytes, layerDescs.length, `${what}: config ${configDesc.digest}`);

      const present = await Promise.all(diffIDs.map((d) => this.options.layers.hasContent(d)));
      const layersOut: PullResult['layers'] = [];
      let downloadedBytes = 0;
      const staged: StagedLayer[] = [];
      let record: ImageRecord;
      try {
        // Each layer's downloaded blob, or null for a layer the store has (or that an earlier place in the list fetches).
        const files = await mapLimit(layerDescs, options.concurrency ?? DEFAULT_CONCURRENCY, async (desc, i, signal): Promise<string | null> => {
          const diffID = diffIDs[i]!;
          const progress = (phase: TransferPhase, bytes: number) => options.onProgress?.({ layer: i + 1, layers: layerDescs.length, digest: desc.digest, phase, bytes, totalBytes: desc.size });
          if (present[i]) {
            progress('exists', desc.size);
            layersOut[i] = { digest: desc.digest, diffID, size: desc.size, action: 'present' };
            return null;
          }
          // A layer listed twice is fetched once: the commit finds the earlier place's content in its own batch.
          if (diffIDs.indexOf(diffID) < i) {
            progress('done', desc.size);
            layersOut[i] = { digest: desc.digest, diffID, size: desc.size, action: 'downloaded' };
            return null;
          }
          progress('downloading', 0);
          const got = await this.downloadOnce(desc.digest, () => this.fetchBlob(client, ref.repository, desc, diffID, progress, signal));
          downloadedBytes += got.transferred;
          progress('done', desc.size);
          layersOut[i] = { digest: desc.digest, diffID, size: desc.size, action: 'downloaded' };
          return got.file;
        });
        // Every blob is here and verified: they become packed layers. A commit that fails from here on costs a
        // new download, never a wrong image.
        const items: CommitItem[] = [];
        for (const [i, file] of files.entries()) {
          const desc = layerDescs[i]!;
          const diffID = diffIDs[i]!;
          if (file === null) {
            items.push({ existingDiffID: diffID });
            continue;
          }
          const s = await this.options.layers.stagePackedBlob(file, { what: `${what}: layer ${desc.digest}`, mediaType: desc.mediaType, digest: desc.digest, size: desc.size, diffID, synced: true });
          staged.push(s);
          items.push({ staged: s });
        }
        const name = ref.tag !== null ? formatReference({ ...ref, digest: null }) : undefined;
        staged.length = 0; // importStaged owns them now: committed, or discarded by it
        record = await this.options.images.importStaged({
          source: 'registry',
          configDigest: configDesc.digest,
          config: JSON.parse(configBytes.toString('utf8')) as unknown,
          configBytes,
          manifestDigest: manifest.digest,
          manifest: JSON.parse(manifest.bytes.toString('utf8')) as unknown,
          names: name === undefined ? [] : [name],
        }, items);
      } catch (err) {
        for (const s of staged) await this.options.layers.discard(s);
        throw err;
      }
      await this.records.remember(`${ref.registry}/${ref.repository}`, [
        { digest: configDesc.digest, size: configDesc.size, mediaType: configDesc.mediaType },
        ...layerDescs.map((d, i) => ({ digest: d.digest, size: d.size, mediaType: d.mediaType, diffID: diffIDs[i]! })),
      ]);
      this.log.info({ ref: formatReference(ref), id: record.id, downloadedBytes, ms: Date.now() - started }, 'pulled image');
      return { reference: formatReference(ref), id: record.id, names: record.names, manifestDigest: manifest.digest, layers: layersOut, downloadedBytes };
    } finally {
      client.close();
    }
  }

  /**
   * Downloads one layer blob into the cache (what a resumed pull starts from), verified against its digest and
   * size before it gets its final name, and made durable (fdatasync) while the other layers still download, so
   * the commit needs no flush of its own (as skopeo fsyncs each blob). Returns file null when the store got the
   * layer meanwhile (another pull of it finished first).
   */
  private async fetchBlob(client: RegistryClient, repository: string, desc: Descriptor, diffID: Digest, progress: (phase: TransferPhase, bytes: number) => void, signal: AbortSignal): Promise<{ file: string | null; transferred: number }> {
    if (await this.options.layers.hasContent(diffID)) return { file: null, transferred: 0 };
    const file = path.join(this.cacheDir, 'blobs', `sha256-${hexOf(desc.digest)}`);
    const transferred = await client.downloadBlob(repository, desc, file, { signal, onProgress: (n) => progress('downloading', n) });
    const handle = await open(file, 'r');
    try {
      await handle.datasync();
    } finally {
      await handle.close();
    }
    return { file, transferred };
  }

  private async downloadOnce<T>(digest: Digest, work: () => Promise<T>): Promise<T> {
    for (;;) {
      const running = this.downloads.get(digest);
      if (running === undefined) break;
      await running.catch(() => undefined);
    }
    const run = work();
    this.downloads.set(digest, run);
    try {
      return await run;
    } finally {
      this.downloads.delete(digest);
    }
  }

  // ---------------------------------------------------------------- push

  async push(localRef: string, destText: string | undefined, options: PushOptions = {}): Promise<PushResult> {
    const image = await this.options.images.resolve(localRef);
    const destSource = destText ?? (image.names.includes(localRef) || !/^(sha256:)?[0-9a-f]{4,64}$/.test(localRef) ? localRef : undefined);
    if (destSource === undefined) throw new StrataError('STRATA_BAD_OPTION', `push ${localRef}: name where to push (strata image push ${localRef} HOST/REPO:TAG)`);
    const dest = parseReference(destSource);
    const what = `push ${formatReference(dest)}`;
    if (dest.digest !== null) throw new StrataError('STRATA_BAD_OPTION', `${what}: push to a tag, not a digest (the registry names the manifest by its digest)`);
    const repoKey = `${dest.registry}/${dest.repository}`;
    const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1024) throw new StrataError('STRATA_BAD_OPTION', `${what}: the chunk size must be at least 1024 bytes`);

    const top = image.chainIDs.at(-1);
    const chain = top === undefined ? [] : [...(await this.options.layers.chain(top))].reverse();
    const infos = await Promise.all(chain.map((r) => this.options.layers.inspect(r.chainID)));
    // Blobs that may stand for each layer: the one it came in, the one it was last exported as.
    const candidates: Array<Array<{ digest: Digest; size: number; mediaType: string; diffID: Digest; repos: string[] }>> = [];
    const mountRepos = new Set<string>();
    for (const info of infos) {
      const list = [];
      const original = await this.records.get(info.compressedDigest);
      list.push({ digest: info.compressedDigest, size: info.compressedSize, mediaType: info.mediaType, diffID: info.diffID, repos: original?.repos ?? [] });
      const exported = await this.records.exportedAs(info.diffID);
      if (exported !== undefined && exported.diffID !== undefined) list.push({ digest: exported.digest, size: exported.size, mediaType: exported.mediaType, diffID: exported.diffID, repos: exported.repos });
      for (const c of list) for (const r of c.repos) if (r !== repoKey && r.startsWith(`${dest.registry}/`)) mountRepos.add(r.slice(dest.registry.length + 1));
      candidates.push(list);
    }
    const configRecord = await this.records.get(image.id);
    for (const r of configRecord?.repos ?? []) if (r !== repoKey && r.startsWith(`${dest.registry}/`)) mountRepos.add(r.slice(dest.registry.length + 1));
    const client = this.client(dest, what);
    client.setScopes([`repository:${dest.repository}:pull,push`, ...[...mountRepos].map((r) => `repository:${r}:pull`)]);
    await this.prepareCache();
    const workDir = path.join(this.cacheDir, `push-${randomBytes(6).toString('hex')}`);
    await mkdir(workDir, { recursive: true, mode: 0o700 });
    const remembered: RememberedBlob[] = [];
    try {
      const layersOut: PushResult['layers'] = [];
      let uploadedBytes = 0;
      await mapLimit(infos, options.concurrency ?? DEFAULT_CONCURRENCY, async (info, i) => {
        const progress = (phase: TransferPhase, bytes: number, total: number | null) => options.onProgress?.({ layer: i + 1, layers: infos.length, digest: info.compressedDigest, phase, bytes, totalBytes: total });
        for (const c of candidates[i]!) {
          const placed = await this.placeWithoutUpload(client, dest, c);
          if (placed !== null) {
            progress(placed === 'present' ? 'exists' : 'mounted', c.size, c.size);
            layersOut[i] = { digest: c.digest, diffID: c.diffID, size: c.size, action: placed };
            remembered.push({ digest: c.digest, size: c.size, mediaType: c.mediaType, diffID: c.diffID });
            return;
          }
        }
        const file = path.join(workDir, `layer-${i}`);
        const upload = async (entry: { digest: Digest; size: number; mediaType: string; diffID: Digest }) => {
          await client.uploadBlob(dest.repository, file, entry.digest, entry.size, { chunkSize, onProgress: (n) => progress('uploading', n, entry.size) });
          uploadedBytes += entry.size;
          progress('done', entry.size, entry.size);
          layersOut[i] = { ...entry, action: 'uploaded' };
        };
        // A packed layer is sent as the blob it came as: its digest stays, nothing is extracted or compressed.
        if (await this.options.layers.linkPackedBlob(info.diffID, file)) {
          const entry = { digest: info.compressedDigest, size: info.compressedSize, mediaType: info.mediaType, diffID: info.diffID };
          await upload(entry);
          remembered.push(entry);
          await rm(file, { force: true });
          return;
        }
        progress('tarring', 0, null);
        const exported = await writeLayerBlob(await this.options.layers.contentDir(info.chainID), file, `${what}: layer ${info.diffID}`);
        const entry = { digest: exported.digest, size: exported.size, mediaType: exported.mediaType, diffID: exported.diffID };
        if (await client.blobExists(dest.repository, exported.digest)) {
          progress('exists', exported.size, exported.size);
          layersOut[i] = { ...entry, action: 'present' };
        } else {
          await upload(entry);
        }
        remembered.push({ ...entry, exportedFrom: info.diffID });
        await rm(file, { force: true });
      });

      const family = manifestFamily(image, layersOut);
      const diffIDs = layersOut.map((l) => l.diffID);
      const unchanged = diffIDs.every((d, i) => d === image.diffIDs[i]);
      let configDesc: Descriptor | null = null;
      if (unchanged) {
        // The original config bytes are not kept; the registry may have them, here or in a repository to mount from.
        let size = await client.blobSize(dest.repository, image.id);
        if (size === null && configRecord !== undefined && (await this.placeWithoutUpload(client, dest, configRecord)) === 'mounted') size = configRecord.size;
        if (size !== null) configDesc = { mediaType: family.config, digest: image.id, size };
      }
      if (configDesc === null) {
        // Unchanged layers keep the config's bytes as the image came (configBytesOf), so it keeps its id. Re-made
        // layers need their new diffIDs listed.
        const bytes = unchanged ? configBytesOf(image) : Buffer.from(JSON.stringify({ ...image.config, rootfs: { type: 'layers', diff_ids: diffIDs } }));
        configDesc = { mediaType: family.config, digest: sha256Of(bytes), size: bytes.length };
        if ((await client.blobSize(dest.repository, configDesc.digest)) === null) {
          const file = path.join(workDir, 'config');
          await writeFile(file, bytes, { mode: 0o600 });
          await client.uploadBlob(dest.repository, file, configDesc.digest, bytes.length, { chunkSize });
          uploadedBytes += bytes.length;
        }
      }
      remembered.push({ digest: configDesc.digest, size: configDesc.size, mediaType: configDesc.mediaType });
      const manifest = {
        schemaVersion: 2,
        mediaType: family.manifest,
        config: configDesc,
        layers: layersOut.map((l, i) => ({ mediaType: family.layer(l.digest === infos[i]!.compressedDigest ? infos[i]!.mediaType : 'application/vnd.oci.image.layer.v1.tar+gzip'), digest: l.digest, size: l.size })),
      };
      const manifestBytes = Buffer.from(JSON.stringify(manifest));
      if (manifestBytes.length > MAX_MANIFEST_BYTES) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: the manifest would be ${manifestBytes.length} bytes, above the registry limit`);
      const manifestDigest = await client.putManifest(dest.repository, dest.tag!, manifestBytes, family.manifest);
      await this.records.remember(repoKey, remembered);
      this.log.info({ ref: formatReference(dest), manifestDigest, uploadedBytes }, 'pushed image');
      return { reference: formatReference(dest), manifestDigest, configDigest: configDesc.digest, layers: layersOut, uploadedBytes };
    } finally {
      client.close();
      await rm(workDir, { recursive: true, force: true });
    }
  }

  /** A blob already in the repository, or mounted from another on the same registry; null if it must be sent. */
  private async placeWithoutUpload(client: RegistryClient, dest: ImageReference, c: { digest: Digest; repos: string[] }): Promise<'present' | 'mounted' | null> {
    if (await client.blobExists(dest.repository, c.digest)) return 'present';
    for (const repo of c.repos) {
      if (!repo.startsWith(`${dest.registry}/`)) continue;
      const from = repo.slice(dest.registry.length + 1);
      if (from === dest.repository) continue;
      if (await client.mountBlob(dest.repository, c.digest, from)) return 'mounted';
    }
    return null;
  }

  // ---------------------------------------------------------------- helpers

  private client(ref: ImageReference, what: string): RegistryClient {
    return new RegistryClient(ref.registry, ref.apiHost, what, { credentials: this.credentials, insecureRegistries: this.insecure, logger: this.options.logger });
  }

  /** Creates the cache dirs and removes what crashed runs left behind. */
  private async prepareCache(): Promise<void> {
    await mkdir(path.join(this.cacheDir, 'blobs'), { recursive: true, mode: 0o700 });
    const now = Date.now();
    for (const [dir, prefix, age] of [[this.cacheDir, /^(pull|push)-/, STALE_MS], [path.join(this.cacheDir, 'blobs'), /^sha256-/, CACHE_MS]] as const) {
      for (const name of await readdir(dir)) {
        if (!prefix.test(name)) continue;
        const st = await stat(path.join(dir, name)).catch(() => null);
        if (st !== null && now - st.mtimeMs > age) await rm(path.join(dir, name), { recursive: true, force: true });
      }
    }
  }
}

/** `HOST[:PORT]`, also accepted as a URL (`https://HOST/`), as docker login takes it. */
function registryHost(text: string): string {
  const host = text.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
  if (!/^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$/.test(host)) throw new StrataError('STRATA_BAD_OPTION', `"${text}" is not a registry host[:port]`);
  return host === 'index.docker.io' || host === 'registry-1.docker.io' ? 'docker.io' : host;
}

const GO_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

function parsePlatform(text: string | undefined): PlatformSpec {
  if (text === undefined) return { os: 'linux', architecture: GO_ARCH[process.arch] ?? process.arch };
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/.test(p))) {
    throw new StrataError('STRATA_BAD_OPTION', `--platform "${text}" is not os/arch[/variant] (e.g. linux/amd64)`);
  }
  return { os: parts[0]!, architecture: parts[1]!, variant: parts[2] };
}

function choosePlatform(bytes: Buffer, want: PlatformSpec, what: string): Descriptor {
  const index = JSON.parse(bytes.toString('utf8')) as { manifests?: unknown };
  if (!Array.isArray(index.manifests)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: the index has no manifests array`);
  const descs = index.manifests.map((m, i) => descriptor(m, `${what}: index entry ${i}`));
  const matches = descs.filter((d) => d.platform?.os === want.os && d.platform?.architecture === want.architecture
    && (want.variant === undefined || d.platform?.variant === want.variant)
    && (d.mediaType === MEDIA_TYPES.ociManifest || d.mediaType === MEDIA_TYPES.dockerManifest));
  if (matches.length === 0) {
    const offered = descs.filter((d) => d.platform !== undefined).map((d) => [d.platform!.os, d.platform!.architecture, d.platform!.variant].filter(Boolean).join('/'));
    const wanted = [want.os, want.architecture, want.variant].filter(Boolean).join('/');
    throw new StrataError('STRATA_NOT_FOUND', `${what}: the index has no image for ${wanted} (it has ${offered.join(', ') || 'no platforms'}); choose one with --platform`);
  }
  return matches[0]!;
}

function checkManifest(bytes: Buffer, mediaType: string, what: string): { config: Descriptor; layers: Descriptor[] } {
  if (mediaType !== MEDIA_TYPES.ociManifest && mediaType !== MEDIA_TYPES.dockerManifest) {
    throw new StrataError('STRATA_UNSUPPORTED', `${what}: media type "${mediaType}" is not an image manifest (OCI or Docker v2 schema 2)`);
  }
  const m = JSON.parse(bytes.toString('utf8')) as { schemaVersion?: unknown; config?: unknown; layers?: unknown };
  if (m.schemaVersion !== 2) throw new StrataError('STRATA_UNSUPPORTED', `${what}: schemaVersion ${String(m.schemaVersion)} is not supported (2 is)`);
  const config = descriptor(m.config, `${what}: config`);
  if (config.mediaType !== MEDIA_TYPES.ociConfig && config.mediaType !== MEDIA_TYPES.dockerConfig) {
    throw new StrataError('STRATA_UNSUPPORTED', `${what}: config media type "${config.mediaType}" is not an image config`);
  }
  if (!Array.isArray(m.layers)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: no layers array`);
  const layers = m.layers.map((l, i) => descriptor(l, `${what}: layer ${i}`));
  for (const [i, l] of layers.entries()) {
    if (!LAYER_MEDIA_TYPES.has(l.mediaType)) throw new StrataError('STRATA_UNSUPPORTED', `${what}: layer ${i} (${l.digest}) has unsupported media type "${l.mediaType}"`);
  }
  return { config, layers };
}

function diffIdsOf(bytes: Buffer, count: number, what: string): Digest[] {
  let config: { rootfs?: { type?: unknown; diff_ids?: unknown } };
  try {
    config = JSON.parse(bytes.toString('utf8')) as typeof config;
  } catch (err) {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what} is not valid JSON`, { cause: err });
  }
  const ids = config.rootfs?.diff_ids;
  if (config.rootfs?.type !== 'layers' || !Array.isArray(ids)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has no rootfs of type "layers" with diff_ids`);
  if (ids.length !== count) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} lists ${ids.length} diff_ids for ${count} layers`);
  return ids.map((d, i) => parseDigest(d, `${what} diff_ids[${i}]`));
}

function descriptor(value: unknown, what: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (d === null || typeof d !== 'object' || typeof d.mediaType !== 'string') throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: descriptor has no mediaType`);
  const digest = parseDigest(d.digest, what);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: size ${String(d.size)} is not a byte count`);
  return { mediaType: d.mediaType, digest, size: d.size, platform: d.platform, annotations: d.annotations };
}

const OCI_OF_DOCKER: Record<string, string> = {
  'application/vnd.docker.image.rootfs.diff.tar': 'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
};

/**
 * The pushed manifest keeps Docker's schema 2 only when the image came that way and every blob is its original;
 * otherwise it is an OCI manifest, with Docker layer media types given their OCI names (same bytes).
 */
function manifestFamily(image: ImageRecord, layers: PushResult['layers']): { manifest: string; config: string; layer: (mediaType: string) => string } {
  const docker = (image.manifest as { mediaType?: unknown } | null)?.mediaType === MEDIA_TYPES.dockerManifest
    && layers.every((l, i) => l.diffID === image.diffIDs[i]);
  if (docker) return { manifest: MEDIA_TYPES.dockerManifest, config: MEDIA_TYPES.dockerConfig, layer: (t) => t };
  return { manifest: MEDIA_TYPES.ociManifest, config: MEDIA_TYPES.ociConfig, layer: (t) => OCI_OF_DOCKER[t] ?? t };
}
