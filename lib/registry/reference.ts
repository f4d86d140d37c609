/**
 * Image references as registries read them: `[HOST[:PORT]/]REPO[:TAG][@sha256:DIGEST]`, Docker's grammar.
 * The first component is a host only when it has a dot or a port, or is `localhost`; otherwise the reference
 * is on Docker Hub (`busybox` -> docker.io/library/busybox:latest).
 */
import { StrataError } from '../errors.js';
import { isDigest, type Digest } from '../layers/digest.js';

export const DOCKER_HUB = 'docker.io';
/** Docker Hub's API answers on another name than the one in references. */
const DOCKER_HUB_API = 'registry-1.docker.io';

export interface ImageReference {
  /** The registry as written in references and keyed in credentials: `127.0.0.1:5000`, `docker.io`. */
  registry: string;
  /** The host[:port] the API is spoken to. */
  apiHost: string;
  repository: string;
  tag: string | null;
  digest: Digest | null;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

export function parseReference(input: string): ImageReference {
  const bad = (why: string) => new StrataError('STRATA_BAD_OPTION', `"${input}" is not an image reference (${why}); expected [HOST[:PORT]/]REPO[:TAG][@sha256:DIGEST]`);
  if (input.length === 0 || input.length > 512) throw bad('empty or too long');
  let rest = input;
  let digest: Digest | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const d = rest.slice(at + 1);
    if (!isDigest(d)) throw bad(`"${d}" is not a sha256 digest`);
    digest = d;
    rest = rest.slice(0, at);
  }
  let registry = DOCKER_HUB;
  const slash = rest.indexOf('/');
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost') {
      if (!/^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$/.test(first)) throw bad(`"${first}" is not a host[:port]`);
      registry = first;
      rest = rest.slice(slash + 1);
    }
  }
  let tag: string | null = null;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`"${tag}" is not a valid tag`);
  }
  if (rest.length === 0 || !rest.split('/').every((c) => COMPONENT.test(c))) throw bad('the repository must be lowercase components separated by "/"');
  if (registry === DOCKER_HUB && !rest.includes('/')) rest = `library/${rest}`;
  if (tag === null && digest === null) tag = 'latest';
  return { registry, apiHost: registry === DOCKER_HUB ? DOCKER_HUB_API : registry, repository: rest, tag, digest };
}

/** `127.0.0.1:5000/app:1`, the familiar spelling (Docker Hub names shortened the way normalizeName does). */
export function formatReference(ref: ImageReference, options: { withDigest?: boolean } = {}): string {
  const repo = ref.registry === DOCKER_HUB ? ref.repository.replace(/^library\//, '') : `${ref.registry}/${ref.repository}`;
  const tag = ref.tag !== null ? `:${ref.tag}` : '';
  const digest = ref.digest !== null && (options.withDigest ?? true) ? `@${ref.digest}` : '';
  return `${repo}${tag}${digest}`;
}

/**
 * Plain HTTP is allowed only for loopback (`localhost`, 127.0.0.0/8, ::1) and for registries the configuration
 * lists in `insecureRegistries` (host or host:port), as Docker does; every other registry is spoken to over TLS.
 */
export function usesPlainHttp(registry: string, insecureRegistries: readonly string[]): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.replace(/:[0-9]+$/, '');
  if (host === 'localhost' || host === '::1' || /^127\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}$/.test(host)) return true;
  return insecureRegistries.includes(registry) || insecureRegistries.includes(host);
}
