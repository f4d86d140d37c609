/**
 * A client for one registry, speaking the OCI distribution API (and Docker's, which is the same protocol):
 * authentication (Basic, and the `WWW-Authenticate: Bearer` token handshake), manifests, blob HEAD/GET with
 * `Range` resume, uploads (monolithic PUT, chunked PATCH + PUT, cross-repository mount).
 *
 * It is built on node:http/https rather than fetch: blob bodies stream straight from files, and the client decides
 * about redirects (credentials are never sent to another host) and about retries itself. Layer blobs download on
 * native threads (lib/native/fetch.ts: libcurl, one GET per call), with the same policy kept here.
 *
 * Invariants: every byte read from the registry is checked against a digest before a caller may use it
 * (manifests and JSON blobs here, layer blobs in downloadBlob); credentials and tokens appear only in request
 * headers, never in errors or logs.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import http, { type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { StrataError, fsError, type StrataCode } from '../errors.js';
import type { Logger } from '../log.js';
import { sha256Of, type Digest } from '../layers/digest.js';
import type { CredentialStore } from './credentials.js';
import { usesPlainHttp } from './reference.js';
import { CURL_UNREACHABLE, fetchToFile, type FetchResult } from '../native/fetch.js';

export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const;

const MANIFEST_ACCEPT = [MEDIA_TYPES.ociManifest, MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerManifest, MEDIA_TYPES.dockerList].join(', ');

/** Manifests and indexes larger than this are refused (the distribution spec lets registries cap them at 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 2 ** 20;
/** Error bodies are read up to this much, for the message. */
const MAX_ERROR_BODY = 64 * 1024;
/** A blob download that breaks off is resumed with Range this many times before the pull fails. */
const RESUME_ATTEMPTS = 3;

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

export interface FetchedManifest {
  bytes: Buffer;
  digest: Digest;
  mediaType: string;
}

export interface RegistryClientOptions {
  credentials: CredentialStore;
  insecureRegistries: readonly string[];
  logger: Logger;
}

export interface BlobDownloadOptions {
  /** Bytes of the blob held so far (cached and downloaded). */
  onProgress?: (done: number) => void;
  /** Stops the download (no retry); what arrived stays in the cache for the next attempt. */
  signal?: AbortSignal;
}

interface Challenge {
  scheme: 'bearer' | 'basic';
  realm?: string;
  service?: string;
}

interface RequestOptions {
  headers?: Record<string, string | number>;
  /** A body, or a factory so that an authentication retry can send it again. */
  body?: Buffer | (() => Readable);
  /** Names the step in errors: "fetching manifest". */
  step: string;
  /** Statuses that are answers, not errors (anything else is turned into a StrataError). */
  ok: number[];
  /** Follow redirects (GET/HEAD of blobs may be sent to a CDN). */
  follow?: boolean;
}

export class RegistryClient {
  readonly baseUrl: string;
  private readonly agent: http.Agent;
  private readonly log: Logger;
  private challenge: Challenge | null = null;
  private authorization: string | null = null;
  private scopes: string[] = [];

  /**
   * @param registry the registry as references name it (credentials are keyed by it)
   * @param apiHost where its API answers
   * @param what prefix of every error message: the command and reference ("pull 127.0.0.1:5000/app:1")
   */
  constructor(readonly registry: string, apiHost: string, private readonly what: string, private readonly options: RegistryClientOptions) {
    const plain = usesPlainHttp(registry, options.insecureRegistries);
    this.baseUrl = `${plain ? 'http' : 'https'}://${apiHost}`;
    this.agent = plain ? new http.Agent({ keepAlive: true, maxSockets: 8 }) : new https.Agent({ keepAlive: true, maxSockets: 8 });
    this.log = options.logger.child({ component: 'registry', registry });
  }

  /** The access the next requests need, e.g. `repository:app:pull,push`; tokens are fetched for exactly these. */
  setScopes(scopes: string[]): void {
    if (scopes.join(' ') !== this.scopes.join(' ')) {
      this.scopes = scopes;
      if (this.challenge?.scheme === 'bearer') this.authorization = null;
    }
  }

  close(): void {
    this.agent.destroy();
  }

  // ---------------------------------------------------------------- API

  /** Checks that the registry speaks the API and that the credentials are accepted (what `login` does). */
  async ping(): Promise<void> {
    const res = await this.request('GET', '/v2/', { step: 'checking the API (/v2/)', ok: [200] });
    res.resume();
  }

  async getManifest(repository: string, reference: string): Promise<FetchedManifest> {
    const step = `fetching manifest ${repository}:${reference}`;
    const res = await this.request('GET', `/v2/${repository}/manifests/${reference}`, { headers: { accept: MANIFEST_ACCEPT }, step, ok: [200] });
    const bytes = await readBody(res, MAX_MANIFEST_BYTES, () => this.fail('STRATA_BAD_ARCHIVE', `${step}: the manifest is larger than the ${MAX_MANIFEST_BYTES}-byte limit`));
    const digest = sha256Of(bytes);
    const claimed = res.headers['docker-content-digest'];
    if (reference.startsWith('sha256:') && digest !== reference) {
      throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry served content with digest ${digest}`);
    }
    if (typeof claimed === 'string' && claimed.startsWith('sha256:') && claimed !== digest) {
      throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry says its digest is ${claimed}, the content has ${digest}`);
    }
    let mediaType = (res.headers['content-type'] ?? '').split(';')[0]!.trim();
    try {
      const parsed = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown };
      if (typeof parsed.mediaType === 'string') mediaType = parsed.mediaType;
    } catch (err) {
      throw this.fail('STRATA_BAD_ARCHIVE', `${step}: the manifest is not valid JSON`, err);
    }
    return { bytes, digest, mediaType };
  }

  async putManifest(repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    const step = `uploading manifest ${repository}:${reference}`;
    const res = await this.request('PUT', `/v2/${repository}/manifests/${reference}`, {
      headers: { 'content-type': mediaType, 'content-length': bytes.length }, body: bytes, step, ok: [201, 200, 202],
    });
    res.resume();
    const digest = sha256Of(bytes);
    const claimed = res.headers['docker-content-digest'];
    if (typeof claimed === 'string' && claimed.startsWith('sha256:') && claimed !== digest) {
      throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry stored it as ${claimed}, the content has ${digest}`);
    }
    return digest;
  }

  /** A small blob (a config), read into memory and verified against its descriptor. */
  async getJsonBlob(repository: string, desc: Descriptor, limit: number, kind: string): Promise<Buffer> {
    const step = `fetching ${kind} ${desc.digest}`;
    if (desc.size > limit) throw this.fail('STRATA_BAD_ARCHIVE', `${step}: it claims ${desc.size} bytes, above the ${limit}-byte limit`);
    const res = await this.request('GET', `/v2/${repository}/blobs/${desc.digest}`, { step, ok: [200], follow: true });
    const bytes = await readBody(res, limit, () => this.fail('STRATA_BAD_ARCHIVE', `${step}: the registry sent more than the ${limit}-byte limit`));
    const digest = sha256Of(bytes);
    if (digest !== desc.digest || bytes.length !== desc.size) {
      throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry served ${bytes.length} bytes with digest ${digest}, the manifest says ${desc.size} bytes`);
    }
    return bytes;
  }

  /**
   * Downloads a blob into `file`, verified. Bytes arrive in `file.partial`; an interrupted download (here, or in
   * an earlier run) resumes from its end with `Range`, and the partial bytes are hashed again first, so the
   * digest always covers the whole blob. Only a verified blob is renamed to `file`.
   * Cache files are not fsynced here: a caller that keeps a blob makes it durable itself.
   *
   * Returns the bytes transferred by this call.
   */
  async downloadBlob(repository: string, desc: Descriptor, file: string, options: BlobDownloadOptions = {}): Promise<number> {
    const { onProgress, signal } = options;
    const step = `fetching blob ${desc.digest}`;
    const done = await stat(file).then((s) => s.size, () => -1);
    if (done === desc.size) {
      const hash = createHash('sha256');
      // Another pull may delete a finished blob between the stat and the read: then it is downloaded again.
      const read = await hashFile(file, hash).then(() => true, (err: unknown) => {
        if ((err as { code?: string }).code === 'ENOENT') return false;
        throw err;
      });
      if (read) {
        const digest = `sha256:${hash.digest('hex')}`;
        if (digest === desc.digest) {
          onProgress?.(desc.size);
          return 0;
        }
        // Damaged on disk since it was verified: fetched again.
        this.log.warn({ digest: desc.digest, found: digest }, 'a cached blob no longer matches its digest; downloading it again');
        await rm(file, { force: true });
      }
    }
    const partial = `${file}.partial`;
    const moved = { bytes: 0 };
    for (let attempt = 0; ; ) {
      if (isAborted(signal)) throw this.aborted(step, signal);
      let result: FetchResult;
      try {
        result = await this.fetchRest(repository, desc, partial, step, options, moved);
      } catch (err) {
        if (!(err instanceof StrataError) || err.code !== 'STRATA_REGISTRY_FAILED' || isAborted(signal)) throw err;
        if ((attempt += 1) >= RESUME_ATTEMPTS) {
          // The partial file stays: the next pull of this blob resumes from its end.
          const held = await stat(partial).then((s) => s.size, () => 0);
          throw new StrataError(err.code, `${err.message} (${held} of ${desc.size} bytes kept for the next attempt)`, { cause: err.cause });
        }
        this.log.warn({ digest: desc.digest, attempt }, 'blob download broke off; resuming with Range');
        await new Promise((r) => setTimeout(r, 250 * attempt));
        continue;
      }
      const digest = `sha256:${result.digest}`;
      if (digest === desc.digest) {
        await rename(partial, file);
        onProgress?.(desc.size);
        return moved.bytes;
      }
      await rm(partial, { force: true });
      // A complete partial file from an earlier run that is not the blob (it was never verified): fetched again.
      if (result.status === 0) continue;
      throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry served ${desc.size} bytes with digest ${digest}`);
    }
  }

  /**
   * Fetches the rest of a blob into `partial` (native, on a thread of its own: lib/native/fetch.ts), following
   * redirects and answering one authentication challenge. Resolves once the file holds the whole blob (its
   * digest computed, not yet compared); throws STRATA_REGISTRY_FAILED when the transfer broke off (what arrived
   * stays, hashed again by the next call), other codes when retrying cannot help. Adds the bytes it moved over
   * the network to `moved`, whatever the outcome.
   */
  private async fetchRest(repository: string, desc: Descriptor, partial: string, step: string, options: BlobDownloadOptions, moved: { bytes: number }): Promise<FetchResult> {
    const { onProgress, signal } = options;
    let url = new URL(`/v2/${repository}/blobs/${desc.digest}`, this.baseUrl);
    let sendCredentials = true;
    let challenged = false;
    for (let hops = 0; ; ) {
      const headers = ['User-Agent: strata'];
      const auth = sendCredentials ? await this.authorizationHeader(step) : null;
      if (auth !== null) headers.push(`Authorization: ${auth}`);
      const progress = new Float64Array(2);
      const onAbort = () => { progress[1] = 1; };
      signal?.addEventListener('abort', onAbort, { once: true });
      const ticker = onProgress === undefined ? null : setInterval(() => onProgress(progress[0]!), 100);
      let result: FetchResult;
      try {
        result = await fetchToFile({ url: url.href, headers, file: partial, size: desc.size, timeoutSeconds: 60, progress, caFile: process.env.NODE_EXTRA_CA_CERTS });
      } finally {
        signal?.removeEventListener('abort', onAbort);
        if (ticker !== null) clearInterval(ticker);
      }
      moved.bytes += result.transferred;
      onProgress?.(result.held);
      if (result.stop === 'aborted' || isAborted(signal)) throw this.aborted(step, signal);
      if (result.stop === 'file') {
        const code = result.code ?? 'EIO';
        // On a full disk, the bytes kept for resuming would keep it full: the space goes back first.
        if (code === 'ENOSPC' || code === 'EDQUOT') await rm(partial, { force: true });
        throw fsError(code, `${this.what}: ${step}: cannot ${result.syscall === 'write' ? 'write' : 'use'} the download cache ${partial}: ${code} (${result.syscall})`);
      }
      if (result.stop === 'overflow') {
        await rm(partial, { force: true });
        throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry sent more than the ${desc.size} bytes the manifest says`);
      }
      if (result.stop === 'range') {
        throw this.fail('STRATA_REGISTRY_FAILED', `${step}: asked for bytes from ${result.held}, the registry sent range "${headerOf(result.headers, 'content-range') ?? ''}"`);
      }
      // No answer, or the blob's answer: a failure is the network's (an error answer's body may break off too).
      const blobAnswer = result.status === 0 || result.status === 200 || result.status === 206;
      if (blobAnswer && result.curlCode !== 0) {
        if (result.status === 0 && CURL_UNREACHABLE.has(result.curlCode)) throw this.fail('STRATA_REGISTRY_FAILED', `${step}: cannot reach ${url.host}: ${result.curlError ?? ''}`);
        throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the connection broke off after ${result.held} bytes (${result.curlError ?? ''})`);
      }
      if (blobAnswer) {
        if (result.held === desc.size) return result;
        throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the registry ended the blob after ${result.held} of ${desc.size} bytes`);
      }
      const location = headerOf(result.headers, 'location');
      if ([301, 302, 303, 307, 308].includes(result.status) && location !== null) {
        if ((hops += 1) > 5) throw this.fail('STRATA_REGISTRY_FAILED', `${step}: too many redirects`);
        const target = new URL(location, url);
        if (target.protocol !== 'https:' && !usesPlainHttp(target.host, this.options.insecureRegistries)) {
          throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the registry redirected to plain HTTP at ${target.host}`);
        }
        // Credentials go to the registry only, never to a storage backend it redirects to.
        sendCredentials &&= target.origin === new URL(this.baseUrl).origin;
        url = target;
        continue;
      }
      if (result.status === 401 && !challenged && sendCredentials) {
        const challenge = parseChallenge(headerOf(result.headers, 'www-authenticate') ?? undefined);
        if (challenge !== null) {
          challenged = true;
          this.challenge = challenge;
          this.authorization = null;
          continue;
        }
      }
      throw this.errorOfAnswer(result.status, statusTextOf(result.headers), result.errorBody, step);
    }
  }

  /**
   * The error of a download stopped because the pull gave up (another layer failed first, and that error is the
   * one reported); its bytes stay cached.
   */
  private aborted(step: string, signal: AbortSignal | undefined): StrataError {
    return this.fail('STRATA_REGISTRY_FAILED', `${step}: stopped because the pull failed`, signal?.reason);
  }

  async blobExists(repository: string, digest: Digest): Promise<boolean> {
    return (await this.blobSize(repository, digest)) !== null;
  }

  /** The size of a blob the repository has (HEAD), or null when it has not. */
  async blobSize(repository: string, digest: Digest): Promise<number | null> {
    const res = await this.request('HEAD', `/v2/${repository}/blobs/${digest}`, { step: `checking blob ${digest}`, ok: [200, 404], follow: true });
    res.resume();
    if (res.statusCode !== 200) return null;
    const size = Number(res.headers['content-length']);
    if (!Number.isSafeInteger(size) || size < 0) throw this.fail('STRATA_REGISTRY_FAILED', `checking blob ${digest}: the registry gave no size`);
    return size;
  }

  /**
   * Asks the registry to mount `digest` from `from` into `repository` (no bytes move). Returns true when it did;
   * false when it opened an ordinary upload instead (which is cancelled: the caller uploads when it needs to).
   */
  async mountBlob(repository: string, digest: Digest, from: string): Promise<boolean> {
    const res = await this.request('POST', `/v2/${repository}/blobs/uploads/?mount=${digest}&from=${encodeURIComponent(from)}`, {
      headers: { 'content-length': 0 }, step: `mounting blob ${digest} from ${from}`, ok: [201, 202],
    });
    res.resume();
    if (res.statusCode === 201) return true;
    const location = res.headers.location;
    if (typeof location === 'string') {
      const cancel = await this.request('DELETE', this.resolveLocation(location).pathname + this.resolveLocation(location).search, { step: 'cancelling an upload', ok: [204, 200, 202, 404, 405] }).catch(() => null);
      cancel?.resume();
    }
    return false;
  }

  /**
   * Uploads a blob from `file`: one PUT when it is at most `chunkSize` bytes, else PATCHes of `chunkSize`
   * bytes each and a closing PUT. The registry checks the digest; its answer is checked too.
   */
  async uploadBlob(repository: string, file: string, digest: Digest, size: number, options: { chunkSize: number; onProgress?: (done: number) => void }): Promise<void> {
    const step = `uploading blob ${digest}`;
    const start = await this.request('POST', `/v2/${repository}/blobs/uploads/`, { headers: { 'content-length': 0 }, step, ok: [202] });
    start.resume();
    let location = this.locationOf(start, step);
    if (size <= options.chunkSize) {
      const res = await this.request('PUT', withDigest(location, digest), {
        headers: { 'content-type': 'application/octet-stream', 'content-length': size },
        body: () => progressStream(createReadStream(file), options.onProgress), step, ok: [201],
      });
      res.resume();
      this.checkDigestHeader(res, digest, step);
      return;
    }
    for (let offset = 0; offset < size; offset += options.chunkSize) {
      const end = Math.min(size, offset + options.chunkSize) - 1;
      const res = await this.request('PATCH', location, {
        headers: { 'content-type': 'application/octet-stream', 'content-length': end - offset + 1, 'content-range': `${offset}-${end}` },
        body: () => progressStream(createReadStream(file, { start: offset, end }), (n) => options.onProgress?.(offset + n)),
        step: `${step} (bytes ${offset}-${end})`, ok: [202],
      });
      res.resume();
      location = this.locationOf(res, step);
    }
    const res = await this.request('PUT', withDigest(location, digest), { headers: { 'content-length': 0 }, step: `${step} (closing the upload)`, ok: [201] });
    res.resume();
    this.checkDigestHeader(res, digest, step);
  }

  // ---------------------------------------------------------------- transport

  private checkDigestHeader(res: IncomingMessage, digest: Digest, step: string): void {
    const claimed = res.headers['docker-content-digest'];
    if (typeof claimed === 'string' && claimed.startsWith('sha256:') && claimed !== digest) {
      throw this.fail('STRATA_DIGEST_MISMATCH', `${step}: the registry stored ${claimed}`);
    }
  }

  private locationOf(res: IncomingMessage, step: string): string {
    const location = res.headers.location;
    if (typeof location !== 'string' || location === '') throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the registry gave no upload location`);
    const url = this.resolveLocation(location);
    return url.pathname + url.search;
  }

  private resolveLocation(location: string): URL {
    const url = new URL(location, this.baseUrl);
    // An upload location on another host would receive our credentials: refuse it.
    if (url.origin !== new URL(this.baseUrl).origin) throw this.fail('STRATA_REGISTRY_FAILED', `the registry sent an upload location on another host (${url.host})`);
    return url;
  }

  /** One API request with authentication (and one retry after a 401 challenge) and optional redirects. */
  async request(method: string, pathAndQuery: string, options: RequestOptions): Promise<IncomingMessage> {
    for (let attempt = 0; ; attempt += 1) {
      const headers: OutgoingHttpHeaders = { 'user-agent': 'strata', ...(options.headers ?? {}) };
      const auth = await this.authorizationHeader(options.step);
      if (auth !== null) headers.authorization = auth;
      let res = await this.send(method, new URL(pathAndQuery, this.baseUrl), headers, options.body, options.step);
      let hops = 0;
      while (options.follow === true && [301, 302, 303, 307, 308].includes(res.statusCode ?? 0) && typeof res.headers.location === 'string') {
        if ((hops += 1) > 5) throw this.fail('STRATA_REGISTRY_FAILED', `${options.step}: too many redirects`);
        res.resume();
        const target = new URL(res.headers.location, this.baseUrl);
        const next: OutgoingHttpHeaders = { ...headers };
        if (target.origin !== new URL(this.baseUrl).origin) delete next.authorization;
        if (target.protocol !== 'https:' && !usesPlainHttp(target.host, this.options.insecureRegistries)) {
          throw this.fail('STRATA_REGISTRY_FAILED', `${options.step}: the registry redirected to plain HTTP at ${target.host}`);
        }
        res = await this.send(method, target, next, undefined, options.step);
      }
      if (res.statusCode === 401 && attempt === 0) {
        const header = res.headers['www-authenticate'];
        res.resume();
        const challenge = parseChallenge(typeof header === 'string' ? header : undefined);
        if (challenge !== null) {
          this.challenge = challenge;
          this.authorization = null;
          continue;
        }
      }
      if (options.ok.includes(res.statusCode ?? 0)) return res;
      throw await this.errorFrom(res, options.step);
    }
  }

  private send(method: string, url: URL, headers: OutgoingHttpHeaders, body: RequestOptions['body'], step: string): Promise<IncomingMessage> {
    const transport = url.protocol === 'https:' ? https : http;
    const agent = url.origin === new URL(this.baseUrl).origin ? this.agent : undefined;
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = transport.request(url, { method, headers, agent, timeout: 60_000 }, resolve);
      req.on('timeout', () => req.destroy(new Error('no answer within 60 s')));
      req.on('error', (err) => reject(this.fail('STRATA_REGISTRY_FAILED', `${step}: cannot reach ${url.host}: ${(err as { code?: string }).code ?? err.message}`, err)));
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else {
        const stream = body();
        stream.on('error', (err) => req.destroy(err));
        stream.pipe(req);
      }
    });
  }

  private async authorizationHeader(step: string): Promise<string | null> {
    if (this.challenge === null) return null;
    if (this.authorization !== null) return this.authorization;
    const creds = await this.options.credentials.get(this.registry);
    const basic = creds === null ? null : `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
    if (this.challenge.scheme === 'basic') {
      if (basic === null) throw this.fail('STRATA_REGISTRY_AUTH', `${step}: ${this.registry} wants a user name and password; run "strata login ${this.registry}"`);
      this.authorization = basic;
      return basic;
    }
    const realm = this.challenge.realm;
    if (realm === undefined) throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the registry's Bearer challenge names no realm`);
    const url = new URL(realm);
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && usesPlainHttp(url.host, this.options.insecureRegistries))) {
      throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the token service ${url.host} is not HTTPS and not an allowed insecure registry`);
    }
    if (this.challenge.service !== undefined) url.searchParams.set('service', this.challenge.service);
    for (const scope of this.scopes) url.searchParams.append('scope', scope);
    const res = await this.send('GET', url, { 'user-agent': 'strata', ...(basic === null ? {} : { authorization: basic }) }, undefined, `${step} (getting a token)`);
    if (res.statusCode !== 200) throw await this.errorFrom(res, `${step} (getting a token from ${url.host})`);
    const body = await readBody(res, 1 << 20, () => this.fail('STRATA_REGISTRY_FAILED', `${step}: the token answer is too large`));
    let token: unknown;
    try {
      const parsed = JSON.parse(body.toString('utf8')) as { token?: unknown; access_token?: unknown };
      token = parsed.token ?? parsed.access_token;
    } catch (err) {
      throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the token service answered something that is not JSON`, err);
    }
    if (typeof token !== 'string' || token === '') throw this.fail('STRATA_REGISTRY_FAILED', `${step}: the token service answered without a token`);
    this.authorization = `Bearer ${token}`;
    return this.authorization;
  }

  private async errorFrom(res: IncomingMessage, step: string): Promise<StrataError> {
    let body: string | null = null;
    try {
      body = (await readBody(res, MAX_ERROR_BODY, () => null)).toString('utf8');
    } catch {
      res.destroy();
    }
    return this.errorOfAnswer(res.statusCode ?? 0, res.statusMessage ?? '', body, step);
  }

  /** The error for an answer whose status is not one the step expects; the registry's own error codes are quoted. */
  private errorOfAnswer(status: number, statusText: string, body: string | null, step: string): StrataError {
    let detail = '';
    try {
      const parsed = JSON.parse(body ?? '') as { errors?: Array<{ code?: string; message?: string }> };
      detail = (parsed.errors ?? []).map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
    } catch {
      // Not the registry's JSON: the status says it all.
    }
    const said = `${status} ${statusText}`.trim() + (detail !== '' ? ` (${detail})` : '');
    if (status === 401) return this.fail('STRATA_REGISTRY_AUTH', `${step}: the registry answered ${said}; check "strata login ${this.registry}"`);
    if (status === 403) return this.fail('STRATA_REGISTRY_AUTH', `${step}: the registry answered ${said}: this user may not do that`);
    if (status === 404) return this.fail('STRATA_NOT_FOUND', `${step}: the registry answered ${said}`);
    if (status === 429) return this.fail('STRATA_REGISTRY_FAILED', `${step}: the registry answered ${said}: too many requests, try again later`);
    return this.fail('STRATA_REGISTRY_FAILED', `${step}: the registry answered ${said}`);
  }

  private fail(code: StrataCode, message: string, cause?: unknown): StrataError {
    return new StrataError(code, `${this.what}: ${message}`, cause === undefined ? undefined : { cause });
  }
}

function parseChallenge(header: string | undefined): Challenge | null {
  if (header === undefined) return null;
  const m = /^\s*(\w+)\s*(.*)$/.exec(header);
  if (m === null) return null;
  const scheme = m[1]!.toLowerCase();
  if (scheme !== 'bearer' && scheme !== 'basic') return null;
  const params: Record<string, string> = {};
  for (const p of m[2]!.matchAll(/(\w+)=(?:"([^"]*)"|([^\s,]*))/g)) params[p[1]!.toLowerCase()] = p[2] ?? p[3] ?? '';
  return { scheme, realm: params.realm, service: params.service };
}

function withDigest(location: string, digest: Digest): string {
  return `${location}${location.includes('?') ? '&' : '?'}digest=${encodeURIComponent(digest)}`;
}

async function readBody(res: IncomingMessage, limit: number, tooLarge: () => StrataError | null): Promise<Buffer> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    res.destroy();
    const err = tooLarge();
    if (err !== null) throw err;
    return Buffer.alloc(0);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) {
      res.destroy();
      const err = tooLarge();
      if (err !== null) throw err;
      break;
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function hashFile(file: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) hash.update(chunk);
}

/** The value of one header in a raw header block ("Name: value" lines), or null. */
function headerOf(block: string | null, name: string): string | null {
  for (const line of (block ?? '').split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === name) return line.slice(colon + 1).trim();
  }
  return null;
}

/** "Not Found" of "HTTP/1.1 404 Not Found" (HTTP/2 has no reason phrase). */
function statusTextOf(block: string | null): string {
  return /^HTTP\/[\d.]+ \d+ ?([^\r\n]*)/.exec(block ?? '')?.[1] ?? '';
}

/** A function, not an inline test: TypeScript would keep `aborted` narrowed to false across awaits. */
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function progressStream(stream: Readable, onProgress?: (done: number) => void): Readable {
  if (onProgress === undefined) return stream;
  let done = 0;
  stream.on('data', (chunk: Buffer) => {
    done += chunk.length;
    onProgress(done);
  });
  return stream;
}
