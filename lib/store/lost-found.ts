/**
 * Reclaimable data under the state dir that no record describes, kept until a user removes it on purpose:
 *  - `<root>/lost+found/<time>-<kind>-<id>`: a mount dir or a layer content dir that start-up (or `strata fsck
 *    --repair`) found without a record. It may hold a user's only copy of their files (an upper whose record a
 *    damaged log lost), so it is moved here, never deleted; `strata system prune --lost` deletes it.
 *  - `<root>/retained/<name>-<id>/upper`: an upper kept by `strata mount rm --keep-upper`;
 *    `strata system prune --retained` deletes it.
 * Moves are renames within the state dir's filesystem, made durable by fsyncing both parent dirs.
 */
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { isErrno } from '../errors.js';
import type { Logger } from '../log.js';

export interface ReclaimableEntry {
  Name: string;
  Path: string;
  /** `mount` or `layer` for lost+found entries, `upper` for retained uppers. */
  Kind: string;
  /** When it was moved there (lost+found: from its name; retained: the dir's mtime). */
  Since: string;
}

export class LostAndFound {
  readonly dir: string;
  readonly retainedDir: string;
  private readonly log: Logger;

  constructor(readonly rootDir: string, logger: Logger) {
    this.dir = path.join(rootDir, 'lost+found');
    this.retainedDir = path.join(rootDir, 'retained');
    this.log = logger.child({ component: 'lost+found' });
  }

  /**
   * Moves `source` (a dir without a record) to lost+found and returns its new path. `kind` and `id` name it;
   * `reason` goes to the log, at warn level, since a user may need to look at it.
   */
  async quarantine(source: string, kind: 'mount' | 'layer' | 'layer-blob' | 'volume', id: string, reason: string): Promise<string> {
    if ((await mkdir(this.dir, { recursive: true, mode: 0o700 })) !== undefined) await fsyncDir(this.rootDir);
    const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    let dest = path.join(this.dir, `${stamp}-${kind}-${id}`);
    for (let n = 1; await exists(dest); n++) dest = path.join(this.dir, `${stamp}-${kind}-${id}.${n}`);
    await rename(source, dest);
    await fsyncDir(this.dir);
    await fsyncDir(path.dirname(source));
    this.log.warn({ from: source, to: dest, reason }, `moved a ${kind} ${kind === 'layer-blob' ? 'file' : 'dir'} without a record to lost+found; \`strata system prune --lost\` deletes it`);
    return dest;
  }

  async listLost(): Promise<ReclaimableEntry[]> {
    const out: ReclaimableEntry[] = [];
    for (const name of await readdirOrEmpty(this.dir)) {
      const m = /^(\d{8}T\d{6}Z)-(layer-blob|[a-z]+)-/.exec(name);
      const since = m?.[1] === undefined ? (await stat(path.join(this.dir, name))).mtime.toISOString()
        : `${m[1].slice(0, 4)}-${m[1].slice(4, 6)}-${m[1].slice(6, 11)}:${m[1].slice(11, 13)}:${m[1].slice(13, 15)}Z`;
      out.push({ Name: name, Path: path.join(this.dir, name), Kind: m?.[2] ?? 'unknown', Since: since });
    }
    return out;
  }

  async listRetained(): Promise<ReclaimableEntry[]> {
    const out: ReclaimableEntry[] = [];
    for (const name of await readdirOrEmpty(this.retainedDir)) {
      const dir = path.join(this.retainedDir, name);
      const st = await stat(dir).catch(() => undefined);
      if (st === undefined) continue;
      out.push({ Name: name, Path: (await exists(path.join(dir, 'upper'))) ? path.join(dir, 'upper') : dir, Kind: 'upper', Since: st.mtime.toISOString() });
    }
    return out;
  }

  /** Deletes every lost+found entry (or only those named). Returns the names deleted. */
  async pruneLost(only?: readonly string[]): Promise<string[]> {
    return this.prune(this.dir, await this.listLost(), only);
  }

  /** Deletes every retained upper (or only those named). Returns the names deleted. */
  async pruneRetained(only?: readonly string[]): Promise<string[]> {
    return this.prune(this.retainedDir, await this.listRetained(), only);
  }

  private async prune(dir: string, entries: ReclaimableEntry[], only?: readonly string[]): Promise<string[]> {
    const chosen = only === undefined ? entries : entries.filter((e) => only.includes(e.Name));
    for (const entry of chosen) {
      await rm(path.join(dir, entry.Name), { recursive: true, force: true });
      this.log.info({ path: path.join(dir, entry.Name) }, 'deleted on request');
    }
    return chosen.map((e) => e.Name);
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** Makes a rename into or out of `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
