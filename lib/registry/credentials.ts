/**
 * Registry credentials, in Docker's config.json format (`{"auths": {"HOST": {"auth": base64("user:password")}}}`)
 * so the file can be shared with docker, podman and skopeo (`--authfile`).
 *
 * Invariants: the file is mode 0600 from its first byte (written to a 0600 temp file, fsynced, renamed over);
 * a password never reaches a log line, an error message or a command line (`login` reads it from stdin).
 * Lookup order: Strata's own file (`<root>/registry-auth.json`, or the one named by --authfile /
 * REGISTRY_AUTH_FILE), then Docker's (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), read only.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { StrataError } from '../errors.js';

export interface Credentials {
  username: string;
  password: string;
}

interface AuthFile {
  auths?: Record<string, { auth?: string; identitytoken?: string }>;
  [key: string]: unknown;
}

export const AUTH_FILE_NAME = 'registry-auth.json';

/** Docker Hub is keyed by its legacy URL in Docker's file. */
function keysFor(registry: string): string[] {
  return registry === 'docker.io' ? ['docker.io', 'https://index.docker.io/v1/', 'index.docker.io', 'registry-1.docker.io'] : [registry, `https://${registry}`, `http://${registry}`];
}

export class CredentialStore {
  /**
   * @param file Strata's credentials file (read and written).
   * @param fallbacks Further files in Docker's format, only read.
   */
  constructor(readonly file: string, private readonly fallbacks: readonly string[] = defaultDockerConfigs()) {}

  async get(registry: string): Promise<Credentials | null> {
    for (const file of [this.file, ...this.fallbacks]) {
      const data = await readAuthFile(file, file === this.file);
      if (data === null) continue;
      for (const key of keysFor(registry)) {
        const entry = data.auths?.[key];
        if (entry?.auth === undefined) continue;
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon <= 0) throw new StrataError('STRATA_BAD_OPTION', `credentials for ${registry} in ${file} are not base64 of "user:password"`);
        return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
      }
    }
    return null;
  }

  async set(registry: string, credentials: Credentials): Promise<void> {
    if (credentials.username.includes(':')) throw new StrataError('STRATA_BAD_OPTION', 'a registry user name cannot contain ":"');
    const data = (await readAuthFile(this.file, true)) ?? {};
    data.auths = { ...(data.auths ?? {}), [registry]: { auth: Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64') } };
    await writePrivate(this.file, `${JSON.stringify(data, null, 2)}\n`);
  }

  /** Forgets `registry`; false when nothing was stored for it. */
  async remove(registry: string): Promise<boolean> {
    const data = await readAuthFile(this.file, true);
    const auths = data?.auths;
    if (data === null || auths === undefined) return false;
    const present = keysFor(registry).filter((k) => k in auths);
    if (present.length === 0) return false;
    for (const k of present) delete auths[k];
    await writePrivate(this.file, `${JSON.stringify(data, null, 2)}\n`);
    return true;
  }
}

function defaultDockerConfigs(): string[] {
  const dir = process.env.DOCKER_CONFIG ?? path.join(os.homedir(), '.docker');
  return [path.join(dir, 'config.json')];
}

async function readAuthFile(file: string, own: boolean): Promise<AuthFile | null> {
  let text: string;
  try {
    if (own) {
      const st = await stat(file);
      // Refuse to use a file others can read: the credentials in it may already be exposed; say so.
      if ((st.mode & 0o077) !== 0) throw new StrataError('STRATA_BAD_OPTION', `credentials file ${file} has mode ${(st.mode & 0o777).toString(8)}; it must not be readable by group or others (chmod 600)`);
    }
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof StrataError) throw err;
    if ((err as { code?: string }).code === 'ENOENT') return null;
    throw new StrataError('STRATA_BAD_OPTION', `cannot read credentials file ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as AuthFile;
  } catch (err) {
    throw new StrataError('STRATA_BAD_OPTION', `credentials file ${file} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

async function writePrivate(file: string, text: string): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(tmp, 'wx', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  await rename(tmp, file);
  const dir = await open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
