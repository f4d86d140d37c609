/**
 * An upper dir (or a stored layer dir) as an OCI layer tar.
 *
 *  - a whiteout (char 0/0) becomes `.wh.NAME`; an opaque dir gets `.wh..wh..opq` right after its own entry;
 *  - a redirected (renamed) dir becomes the equivalent delete plus full add: its old name is deleted by the
 *    whiteout the rename left there, and the dir is written opaque with everything the merged view shows in it
 *    (the only case that reads lower layers);
 *  - owners, modes, nanosecond mtimes (PAX), xattrs except the kernel's trusted.overlay.* (a user's escaped
 *    trusted.overlay.overlay.X is written as trusted.overlay.X), device numbers and symlink targets are kept;
 *  - hard links: the first name in walk order carries the data, the others are link entries to it;
 *  - sockets are skipped (no tar type; Docker does the same).
 * Entries come in byte order of names, parents first, so the same tree always gives the same tar (and diffID):
 * a layer written from an upper and written again later from the store's extracted copy are identical.
 */
import { createReadStream, readFileSync, readlinkSync, type BigIntStats } from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { LowerView, byteOrder, isOpaque, isWhiteout, lstatOrNull, redirectOf, redirectOrigin, sortedNames, userXattrs } from './overlay-walk.js';
import { TarWriter, type TarHeader, type TarType } from './tar-writer.js';

export interface LayerTarStats {
  entries: number;
  /** Bytes of file data read (upper and, for redirected dirs, lower). */
  dataBytes: number;
  /** Regular files whose data was read. */
  filesRead: number;
  /** Names looked up in lower layers (0 unless a redirect needed them). */
  lowerLookups: number;
  tarBytes: number;
}

/** Writes the layer tar of `dir` (an upper over `lowerDirs`, top first, or a stored layer with no lowers) to `out`. */
export async function writeLayerTar(dir: string, lowerDirs: readonly string[], out: Writable): Promise<LayerTarStats> {
  const tar = new TarWriter(out);
  const lower = new LowerView(lowerDirs);
  const links = new Map<string, string>();
  const stats: LayerTarStats = { entries: 0, dataBytes: 0, filesRead: 0, lowerLookups: 0, tarBytes: 0 };

  const marker = async (name: string) => {
    stats.entries += 1;
    // Fixed metadata: a marker's own times and owner are not part of the tree, and must not change the diffID.
    await tar.entry({ name, type: 'file', mode: 0o644, uid: 0, gid: 0, size: 0, mtimeSec: 0n, mtimeNsec: 0n });
  };

  const emit = async (real: string, rel: string, st: BigIntStats) => {
    stats.entries += 1;
    const base = headerOf(real, rel, st);
    if (base === null) return;
    if (base.type !== 'directory' && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const first = links.get(key);
      if (first !== undefined) {
        await tar.entry({ ...base, type: 'link', size: 0, linkname: first });
        return;
      }
      links.set(key, rel);
    }
    if (base.type === 'file') {
      stats.filesRead += 1;
      stats.dataBytes += base.size;
      // Small files in one synchronous read: a stream costs several event-loop turns per file, which dominates
      // a commit of many small files.
      await tar.entry(base, base.size <= SMALL_FILE ? once(readFileSync(real)) : createReadStream(real, { highWaterMark: 1 << 20 }));
    } else {
      await tar.entry(base);
    }
  };

  const walk = async (upper: string, rel: string) => {
    for (const name of sortedNames(upper)) {
      const real = path.join(upper, name);
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const st = lstatOrNull(real);
      if (st === null) continue;
      if (isWhiteout(st)) {
        await marker(rel === '' ? `.wh.${name}` : `${rel}/.wh.${name}`);
        continue;
      }
      if (!st.isDirectory()) {
        await emit(real, childRel, st);
        continue;
      }
      const redirect = redirectOf(real);
      await emit(real, childRel, st);
      if (redirect !== null) {
        await marker(`${childRel}/.wh..wh..opq`);
        await addAll(real, redirectOrigin(redirect, rel), childRel);
        continue;
      }
      if (isOpaque(real)) await marker(`${childRel}/.wh..wh..opq`);
      await walk(real, childRel);
    }
  };

  /** The merged dir of `upper` (or null) over merged lower dir `lowerRel` (or null), written in full. */
  const addAll = async (upper: string | null, lowerRel: string | null, rel: string) => {
    const lowerNames = lowerRel === null || (upper !== null && isOpaque(upper)) ? new Map<string, string>() : lower.list(lowerRel);
    const names = [...new Set([...(upper === null ? [] : sortedNames(upper)), ...lowerNames.keys()])].sort(byteOrder);
    for (const name of names) {
      const childRel = `${rel}/${name}`;
      const upperReal = upper === null ? null : path.join(upper, name);
      const upperSt = upperReal === null ? null : lstatOrNull(upperReal);
      if (upperSt !== null && isWhiteout(upperSt)) continue;
      const childLower = lowerRel === null ? null : `${lowerRel}/${name}`;
      if (upperSt !== null && upperReal !== null) {
        await emit(upperReal, childRel, upperSt);
        if (!upperSt.isDirectory()) continue;
        const redirect = redirectOf(upperReal);
        const from = redirect !== null ? redirectOrigin(redirect, lowerRel ?? rel) : lowerNames.has(name) ? childLower : null;
        await addAll(upperReal, from, childRel);
        continue;
      }
      const lowerReal = lowerNames.get(name);
      const lowerSt = lowerReal === undefined ? null : lstatOrNull(lowerReal);
      if (lowerReal === undefined || lowerSt === null) continue;
      await emit(lowerReal, childRel, lowerSt);
      if (lowerSt.isDirectory()) await addAll(null, childLower, childRel);
    }
  };

  await walk(dir, '');
  await tar.finish();
  stats.lowerLookups = lower.lookups;
  stats.tarBytes = tar.bytes;
  return stats;
}

const SMALL_FILE = 1 << 20;

async function* once(chunk: Buffer): AsyncIterable<Buffer> {
  yield chunk;
}

function headerOf(real: string, rel: string, st: BigIntStats): TarHeader | null {
  let type: TarType;
  if (st.isFile()) type = 'file';
  else if (st.isDirectory()) type = 'directory';
  else if (st.isSymbolicLink()) type = 'symlink';
  else if (st.isCharacterDevice()) type = 'char';
  else if (st.isBlockDevice()) type = 'block';
  else if (st.isFIFO()) type = 'fifo';
  else return null;
  const rdev = Number(st.rdev);
  return {
    name: rel,
    type,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: type === 'file' ? Number(st.size) : 0,
    mtimeSec: st.mtimeNs / 1_000_000_000n,
    mtimeNsec: st.mtimeNs % 1_000_000_000n,
    linkname: type === 'symlink' ? readlink(real) : undefined,
    devmajor: type === 'char' || type === 'block' ? major(rdev) : undefined,
    devminor: type === 'char' || type === 'block' ? minor(rdev) : undefined,
    xattrs: userXattrs(real),
  };
}

function readlink(file: string): string {
  return readlinkSync(file);
}

/** glibc's gnu_dev_major/minor. */
function major(dev: number): number {
  return ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
}
function minor(dev: number): number {
  return (dev & 0xff) | ((dev >>> 12) & ~0xff);
}
