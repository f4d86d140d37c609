/**
 * Readers of image sources, without a daemon or network: an OCI image layout directory (umoci, `skopeo copy …
 * oci:DIR`), a `docker save` archive (`manifest.json`, `repositories`), and a tar of either (unpacked first).
 * They only read and verify metadata (every JSON blob against its digest); layer blobs are verified while
 * they are extracted (LayerStore.stageTarFile with expectDigest/expectDiffID).
 */
import { readFile, realpath, stat, symlink } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { closeSync, createReadStream, lstatSync, mkdirSync, openSync } from 'node:fs';
import { StrataError } from '../errors.js';
import { safeComponents, writeEntryData } from '../layers/apply-tar.js';
import { hexOf, isDigest, parseDigest, sha256Of, type Digest } from '../layers/digest.js';
import { LAYER_MEDIA_TYPES } from '../layers/layer-store.js';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
} as const;

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';
/** JSON blobs (index, manifest, config) larger than this are refused as absurd. */
const MAX_JSON_BYTES = 8 * 2 ** 20;

export interface SourceLayer {
  /** The blob file, inside the source dir. */
  file: string;
  /** Names the blob in errors. */
  what: string;
  mediaType: string;
  /** Blob digest and size when the source states them (OCI descriptors). */
  digest?: Digest;
  size?: number;
  /** The diffID the image config promises for this layer. */
  diffID: Digest;
}

export interface SourceImage {
  configDigest: Digest;
  config: ImageConfig;
  /** The config as the source has it (its digest is configDigest). */
  configBytes: Buffer;
  manifestDigest: Digest | null;
  manifest: unknown;
  /** Full names (repo:tag) the source gives this image. */
  names: string[];
  /** A bare tag from org.opencontainers.image.ref.name (umoci, skopeo oci:DIR:tag). */
  refTag?: string;
  layers: SourceLayer[];
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  created?: string;
  config?: Record<string, unknown>;
  rootfs: { type: string; diff_ids: Digest[] };
  [key: string]: unknown;
}

interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string };
}

/** What kind of source a path is. */
export async function sniffSource(dir: string): Promise<'oci-layout' | 'docker-archive' | null> {
  if (await exists(path.join(dir, 'manifest.json'))) return 'docker-archive';
  if (await exists(path.join(dir, 'oci-layout'))) return 'oci-layout';
  return null;
}

// ------------------------------------------------------------------ OCI image layout

export async function readOciLayout(dir: string): Promise<SourceImage[]> {
  const layout = await readJsonFile(path.join(dir, 'oci-layout'), `${dir}/oci-layout`);
  const version = (layout as { imageLayoutVersion?: unknown }).imageLayoutVersion;
  if (version !== '1.0.0') throw new StrataError('STRATA_UNSUPPORTED', `${dir}: OCI layout version "${String(version)}" is not supported (1.0.0 is)`);
  const index = await readJsonFile(path.join(dir, 'index.json'), `${dir}/index.json`);
  const images: SourceImage[] = [];
  for (const desc of descriptorsOf(index, `${dir}/index.json`)) {
    images.push(...(await readManifestOrIndex(dir, desc, desc.annotations ?? {})));
  }
  if (images.length === 0) throw new StrataError('STRATA_BAD_ARCHIVE', `${dir}/index.json lists no image manifest`);
  return images;
}

async function readManifestOrIndex(dir: string, desc: Descriptor, annotations: Record<string, string>): Promise<SourceImage[]> {
  if (desc.mediaType === MEDIA.ociIndex || desc.mediaType === MEDIA.dockerList) {
    const nested = await readJsonBlob(dir, desc, 'index');
    const all = descriptorsOf(nested, `index ${desc.digest}`);
    // A multi-platform index: the entry for this machine, or the only one.
    const goArch = ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x' } as Record<string, string>)[process.arch];
    const mine = all.filter((d) => d.platform === undefined || (d.platform.os === 'linux' && d.platform.architecture === goArch));
    const chosen = mine.length > 0 ? mine.slice(0, 1) : all.length === 1 ? all : [];
    if (chosen.length === 0) throw new StrataError('STRATA_UNSUPPORTED', `index ${desc.digest} has no manifest for linux/${goArch ?? process.arch}`);
    return readManifestOrIndex(dir, chosen[0]!, { ...annotations, ...(chosen[0]!.annotations ?? {}) });
  }
  if (desc.mediaType !== MEDIA.ociManifest && desc.mediaType !== MEDIA.dockerManifest) {
    throw new StrataError('STRATA_UNSUPPORTED', `manifest ${desc.digest} has unsupported media type "${desc.mediaType}"`);
  }
  const manifest = (await readJsonBlob(dir, desc, 'manifest')) as { schemaVersion?: unknown; config?: unknown; layers?: unknown };
  const what = `manifest ${desc.digest}`;
  if (manifest.schemaVersion !== 2) throw new StrataError('STRATA_UNSUPPORTED', `${what}: schemaVersion ${String(manifest.schemaVersion)} is not supported (2 is)`);
  const configDesc = toDescriptor(manifest.config, `${what} config`);
  if (configDesc.mediaType !== MEDIA.ociConfig && configDesc.mediaType !== MEDIA.dockerConfig) {
    throw new StrataError('STRATA_UNSUPPORTED', `${what}: config media type "${configDesc.mediaType}" is not an image config`);
  }
  const configBytes = await readSmallBlob(dir, configDesc, 'config');
  const config = validateConfig(parseJson(configBytes, `config ${configDesc.digest}`), `config ${configDesc.digest}`);
  if (!Array.isArray(manifest.layers)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has no layers array`);
  const layerDescs = manifest.layers.map((l, i) => toDescriptor(l, `${what} layer ${i}`));
  if (layerDescs.length !== config.rootfs.diff_ids.length) {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has ${layerDescs.length} layers but its config lists ${config.rootfs.diff_ids.length} diff_ids`);
  }
  const layers: SourceLayer[] = [];
  for (const [i, l] of layerDescs.entries()) {
    if (!LAYER_MEDIA_TYPES.has(l.mediaType)) {
      throw new StrataError('STRATA_UNSUPPORTED', `${what} layer ${i} (${l.digest}) has unsupported media type "${l.mediaType}"`);
    }
    layers.push({ file: await blobFile(dir, l, what), what: `layer ${l.digest}`, mediaType: l.mediaType, digest: l.digest, size: l.size, diffID: config.rootfs.diff_ids[i]! });
  }
  const refName = annotations[REF_NAME];
  const fullName = annotations[CONTAINERD_NAME] ?? (refName !== undefined && /[:/]/.test(refName) ? refName : undefined);
  return [{
    configDigest: configDesc.digest,
    config,
    configBytes,
    manifestDigest: desc.digest,
    manifest,
    names: fullName !== undefined ? [normalizeName(fullName)] : [],
    refTag: refName !== undefined && !/[:/]/.test(refName) ? refName : undefined,
    layers,
  }];
}

function descriptorsOf(index: unknown, what: string): Descriptor[] {
  const manifests = (index as { manifests?: unknown }).manifests;
  if (!Array.isArray(manifests)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has no manifests array`);
  return manifests.map((m, i) => toDescriptor(m, `${what} entry ${i}`));
}

function toDescriptor(value: unknown, what: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (d === null || typeof d !== 'object' || typeof d.mediaType !== 'string') {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: descriptor has no mediaType`);
  }
  const digest = parseDigest(d.digest, what);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: descriptor size ${String(d.size)} is not a valid byte count`);
  }
  return { mediaType: d.mediaType, digest, size: d.size, annotations: d.annotations, platform: d.platform };
}

/** The path of a blob; it must exist and have the descriptor's size. */
async function blobFile(dir: string, desc: Descriptor, owner: string): Promise<string> {
  const file = path.join(dir, 'blobs', 'sha256', hexOf(desc.digest));
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${owner} names blob ${desc.digest}, which is missing from ${dir}`);
  }
  if (size !== desc.size) {
    throw new StrataError('STRATA_DIGEST_MISMATCH', `blob ${desc.digest} has ${size} bytes, ${owner} says ${desc.size}`);
  }
  return file;
}

async function readJsonBlob(dir: string, desc: Descriptor, kind: string): Promise<unknown> {
  return parseJson(await readSmallBlob(dir, desc, kind), `${kind} ${desc.digest}`);
}

/** A JSON blob's bytes, verified against its descriptor. */
async function readSmallBlob(dir: string, desc: Descriptor, kind: string): Promise<Buffer> {
  if (desc.size > MAX_JSON_BYTES) throw new StrataError('STRATA_BAD_ARCHIVE', `${kind} ${desc.digest} claims ${desc.size} bytes, above the ${MAX_JSON_BYTES} limit`);
  const file = await blobFile(dir, desc, kind);
  const bytes = await readFile(file);
  const actual = sha256Of(bytes);
  if (actual !== desc.digest) throw new StrataError('STRATA_DIGEST_MISMATCH', `${kind} blob ${desc.digest} has digest ${actual}`);
  return bytes;
}

/** Checks that a parsed image config has the rootfs an image needs (diff_ids, each a sha256 digest). */
export function validateConfig(value: unknown, what: string): ImageConfig {
  const config = value as Partial<ImageConfig> | null;
  const rootfs = config?.rootfs;
  if (!rootfs || rootfs.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has no rootfs of type "layers" with diff_ids`);
  }
  rootfs.diff_ids.forEach((d, i) => parseDigest(d, `${what} diff_ids[${i}]`));
  return config as ImageConfig;
}

// ------------------------------------------------------------------ docker save

/** Reads an unpacked `docker save` archive (legacy `<id>/layer.tar` or the newer `blobs/sha256/…` form). */
export async function readDockerArchive(dir: string): Promise<SourceImage[]> {
  const manifest = await readJsonFile(path.join(dir, 'manifest.json'), `${dir}/manifest.json`);
  if (!Array.isArray(manifest) || manifest.length === 0) throw new StrataError('STRATA_BAD_ARCHIVE', `${dir}/manifest.json lists no image`);
  const images: SourceImage[] = [];
  for (const [n, entry] of (manifest as Array<{ Config?: unknown; RepoTags?: unknown; Layers?: unknown }>).entries()) {
    const what = `manifest.json entry ${n}`;
    if (typeof entry?.Config !== 'string' || !Array.isArray(entry.Layers)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has no Config or Layers`);
    const configFile = await insideFile(dir, entry.Config, what);
    const configBytes = await readFile(configFile);
    if (configBytes.length > MAX_JSON_BYTES) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: config ${entry.Config} is larger than ${MAX_JSON_BYTES} bytes`);
    const configDigest = sha256Of(configBytes);
    const namedHex = /([0-9a-f]{64})(?:\.json)?$/.exec(entry.Config)?.[1];
    if (namedHex !== undefined && `sha256:${namedHex}` !== configDigest) {
      throw new StrataError('STRATA_DIGEST_MISMATCH', `${what}: config ${entry.Config} has digest ${configDigest}`);
    }
    const config = validateConfig(parseJson(configBytes, `config ${entry.Config}`), `config ${entry.Config}`);
    if (entry.Layers.length !== config.rootfs.diff_ids.length) {
      throw new StrataError('STRATA_BAD_ARCHIVE', `${what} has ${entry.Layers.length} layers but its config lists ${config.rootfs.diff_ids.length} diff_ids`);
    }
    const layers: SourceLayer[] = [];
    for (const [i, name] of (entry.Layers as unknown[]).entries()) {
      if (typeof name !== 'string') throw new StrataError('STRATA_BAD_ARCHIVE', `${what} layer ${i} is not a path`);
      const file = await insideFile(dir, name, what);
      const blobHex = /blobs\/sha256\/([0-9a-f]{64})$/.exec(name)?.[1];
      layers.push({
        file,
        what: `layer ${name}`,
        mediaType: MEDIA.dockerLayerTar,
        digest: blobHex !== undefined && isDigest(`sha256:${blobHex}`) ? (`sha256:${blobHex}` as Digest) : undefined,
        diffID: config.rootfs.diff_ids[i]!,
      });
    }
    const tags = Array.isArray(entry.RepoTags) ? entry.RepoTags.filter((t): t is string => typeof t === 'string') : [];
    images.push({ configDigest, config, configBytes, manifestDigest: null, manifest: entry, names: tags.map(normalizeName), layers });
  }
  return images;
}

/** Resolves a path named by an archive's metadata; it must stay inside the archive (symlinks included). */
async function insideFile(dir: string, name: string, what: string): Promise<string> {
  const parts = safeComponents(name, name, what);
  const candidate = path.join(dir, ...parts);
  let real: string;
  try {
    real = await realpath(candidate);
  } catch {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what} names ${name}, which is missing from the archive`);
  }
  const realDir = await realpath(dir);
  if (!real.startsWith(`${realDir}/`)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} names ${name}, which leads outside the archive`);
  return real;
}

// ------------------------------------------------------------------ archives

/**
 * Unpacks an image archive (docker save, or a tarred OCI layout) into `dest`. Only files, directories and
 * symlinks are expected; names are checked like layer entries, and symlinks are only followed later through
 * insideFile(), which refuses any that leave the archive.
 */
export async function unpackArchive(file: string, dest: string, maxBytes: number): Promise<void> {
  const { default: tarStream } = await import('tar-stream');
  const extractor = tarStream.extract();
  const piping = pipeline(createReadStream(file), extractor as unknown as NodeJS.WritableStream);
  let streamError: unknown;
  piping.catch((err: unknown) => { streamError = err; });
  let total = 0;
  let last = '(none)';
  try {
    for await (const entry of extractor) {
      const h = entry.header;
      last = h.name;
      const parts = safeComponents(h.name, h.name, file);
      const full = path.join(dest, ...parts);
      if (parts.length === 0) { entry.resume(); continue; }
      ensureRealParents(dest, parts, file, h.name);
      total += h.size ?? 0;
      if (total > maxBytes) throw new StrataError('STRATA_BAD_ARCHIVE', `${file}: entry "${h.name}" takes the archive above ${maxBytes} bytes`);
      if (h.type === 'directory') {
        if (!lstatSync(full, { throwIfNoEntry: false })?.isDirectory()) mkdirSync(full);
        entry.resume();
      } else if (h.type === 'file' || h.type === 'contiguous-file') {
        const fd = openSync(full, 'wx', 0o600);
        try {
          await writeEntryData(entry as unknown as AsyncIterable<Buffer>, fd);
        } finally {
          closeSync(fd);
        }
      } else if (h.type === 'symlink') {
        await symlink(h.linkname ?? '', full);
        entry.resume();
      } else {
        throw new StrataError('STRATA_BAD_ARCHIVE', `${file}: entry "${h.name}" is a ${String(h.type)}, not expected in an image archive`);
      }
    }
    await piping;
  } catch (err) {
    if (err instanceof StrataError) throw err;
    const e = err as { syscall?: string; message?: string };
    if (e.syscall !== undefined) throw err;
    await piping.catch(() => undefined);
    const cause = (streamError ?? err) as { message?: string };
    throw new StrataError('STRATA_BAD_ARCHIVE', `${file}: truncated or corrupt archive after entry "${last}": ${cause.message ?? String(cause)}`, { cause });
  }
}

/** Creates the parents of an archive entry; none may be a symlink (a symlink entry must not redirect later ones). */
function ensureRealParents(dest: string, parts: string[], file: string, entry: string): void {
  let dir = dest;
  for (const part of parts.slice(0, -1)) {
    dir = path.join(dir, part);
    const st = lstatSync(dir, { throwIfNoEntry: false });
    if (st === undefined) mkdirSync(dir);
    else if (!st.isDirectory()) throw new StrataError('STRATA_BAD_ARCHIVE', `${file}: entry "${entry}" goes through "${path.relative(dest, dir)}", which is not a directory`);
  }
}

// ------------------------------------------------------------------ helpers

/**
 * "busybox" -> "busybox:latest"; a name with a tag or digest is kept. Docker Hub names are shown the familiar way
 * ("docker.io/library/busybox:1" -> "busybox:1"), as docker does, so either spelling finds the image.
 */
export function normalizeName(name: string): string {
  const trimmed = name.trim().replace(/^(?:docker\.io|index\.docker\.io)\/(?:library\/)?/, '');
  if (!/^[a-z0-9][a-z0-9._/:@-]*$/i.test(trimmed) || trimmed.length > 255) {
    throw new StrataError('STRATA_BAD_OPTION', `"${name}" is not a valid image name (repo[:tag])`);
  }
  const lastSlash = trimmed.lastIndexOf('/');
  if (trimmed.includes('@')) return trimmed;
  return trimmed.indexOf(':', lastSlash + 1) === -1 ? `${trimmed}:latest` : trimmed;
}

async function readJsonFile(file: string, what: string): Promise<unknown> {
  let bytes: Buffer;
  try {
    const st = await stat(file);
    if (st.size > MAX_JSON_BYTES) throw new StrataError('STRATA_BAD_ARCHIVE', `${what} is larger than ${MAX_JSON_BYTES} bytes`);
    bytes = await readFile(file);
  } catch (err) {
    if (err instanceof StrataError) throw err;
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what} is missing or unreadable`, { cause: err });
  }
  return parseJson(bytes, what);
}

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new StrataError('STRATA_BAD_ARCHIVE', `${what} is not valid JSON`, { cause: err });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}
