/** Digests and ids of the OCI image spec: sha256 digests, diffIDs and chainIDs. */
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { StrataError } from '../errors.js';

export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function isDigest(value: unknown): value is Digest {
  return typeof value === 'string' && DIGEST_RE.test(value);
}

/** Validates a digest read from untrusted input (a manifest, a config); only sha256 is supported. */
export function parseDigest(value: unknown, what: string): Digest {
  if (typeof value === 'string' && /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:/.test(value) && !value.startsWith('sha256:')) {
    throw new StrataError('STRATA_UNSUPPORTED', `${what}: digest algorithm of "${value}" is not supported (only sha256)`);
  }
  if (!isDigest(value)) throw new StrataError('STRATA_BAD_ARCHIVE', `${what}: "${String(value)}" is not a sha256 digest`);
  return value;
}

export function hexOf(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

export function sha256Of(data: string | Buffer): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln)). */
export function chainIdOf(parentChainId: Digest | null, diffId: Digest): Digest {
  return parentChainId === null ? diffId : sha256Of(`${parentChainId} ${diffId}`);
}

/** The chainIDs of a whole stack of diffIDs, bottom layer first. */
export function chainIdsOf(diffIds: readonly Digest[]): Digest[] {
  const out: Digest[] = [];
  let parent: Digest | null = null;
  for (const diffId of diffIds) {
    parent = chainIdOf(parent, diffId);
    out.push(parent);
  }
  return out;
}

/**
 * A pass-through stream that hashes and counts what flows through it, and fails once more than
 * `limitBytes` have passed (the guard against absurd or endless input).
 */
export class HashingStream extends Transform {
  private readonly hash = createHash('sha256');
  bytes = 0;
  private finalDigest: Digest | null = null;

  constructor(private readonly limitBytes: number, private readonly what: string) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limitBytes) {
      callback(new StrataError('STRATA_BAD_ARCHIVE', `${this.what} is larger than the limit of ${this.limitBytes} bytes`));
      return;
    }
    this.hash.update(chunk);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.finalDigest = `sha256:${this.hash.digest('hex')}`;
    callback();
  }

  /** The digest of everything that passed; only valid once the stream has ended. */
  get digest(): Digest {
    if (this.finalDigest === null) throw new StrataError('STRATA_INTERNAL', `digest of ${this.what} read before its end`);
    return this.finalDigest;
  }
}
