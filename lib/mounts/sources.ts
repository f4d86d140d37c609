/**
 * What a mount is made of. A source is an image or layer reference (resolved and reference-counted by the layer
 * store) or an absolute directory path used as-is. The mount service only needs this narrow interface, so it does
 * not depend on how the layer store keeps its records.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { StrataError } from '../errors.js';
import type { BatchOp } from '../store/metastore.js';

export interface ResolvedSource {
  /** What the user named: an image reference, a layer id, or an absolute directory. */
  reference: string;
  kind: 'image' | 'layer' | 'dir';
  /** Top layer first, as in overlayfs's lowerdir. */
  lowerDirs: string[];
  /** Layer ids that this source holds a reference on while the mount exists (empty for plain dirs). */
  layerIds: string[];
  /** For an image: its id when the mount was created, so a tag that has moved since can be shown as such. */
  imageId?: string;
}

export interface LayerProvider {
  /** Resolves an image reference or layer id to its extracted layer dirs, top first. Unknown: STRATA_NOT_FOUND. */
  resolve(reference: string): Promise<Omit<ResolvedSource, 'reference'>>;
  /**
   * Writes `ops` (the mount's own record change) together with `user` (for example "mount:web") taking ('put') or
   * dropping ('del') one reference per layer, in one atomic batch. 'put' fails with STRATA_NOT_FOUND if a layer is
   * gone; dropping what is not held is a no-op.
   */
  writeWithReferences(layerIds: string[], user: string, type: 'put' | 'del', ops: BatchOp[]): Promise<void>;
}

/** overlayfs option syntax reserves these characters in a lowerdir/upperdir path. */
const UNSAFE_PATH_CHARS = /[,:\n]/;

export function isDirectoryReference(reference: string): boolean {
  return reference.startsWith('/');
}

export async function checkUsableDir(dir: string, what: string): Promise<void> {
  if (!path.isAbsolute(dir)) throw new StrataError('STRATA_BAD_DIR', `${what} "${dir}" must be an absolute path`);
  if (UNSAFE_PATH_CHARS.test(dir)) throw new StrataError('STRATA_BAD_DIR', `${what} "${dir}" contains ',' ':' or a newline, which overlay mount options cannot carry; rename it`);
  let info;
  try {
    info = await stat(dir);
  } catch (err) {
    throw new StrataError('STRATA_BAD_DIR', `${what} "${dir}" does not exist (create it with mkdir -p)`, { cause: err });
  }
  if (!info.isDirectory()) throw new StrataError('STRATA_BAD_DIR', `${what} "${dir}" is not a directory`);
}

export async function resolveSources(references: string[], layers: LayerProvider): Promise<ResolvedSource[]> {
  if (references.length === 0) throw new StrataError('STRATA_BAD_REQUEST', 'a mount needs at least one image, layer or directory');
  const resolved: ResolvedSource[] = [];
  for (const reference of references) {
    if (typeof reference !== 'string' || reference === '') throw new StrataError('STRATA_BAD_REQUEST', 'every source must be a non-empty string');
    if (isDirectoryReference(reference)) {
      await checkUsableDir(reference, 'layer directory');
      resolved.push({ reference, kind: 'dir', lowerDirs: [reference], layerIds: [] });
    } else {
      let found;
      try {
        found = await layers.resolve(reference);
      } catch (err) {
        if (!(err instanceof StrataError) || (err.code !== 'STRATA_NOT_FOUND' && err.code !== 'STRATA_BAD_OPTION')) throw err;
        throw new StrataError('STRATA_NOT_FOUND', `no image or layer named "${reference}": import it with \`strata image import\`, or give a directory as /path or ./path`, { cause: err });
      }
      for (const dir of found.lowerDirs) await checkUsableDir(dir, `layer directory of ${reference}`);
      resolved.push({ reference, ...found });
    }
  }
  return resolved;
}
