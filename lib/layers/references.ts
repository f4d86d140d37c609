/**
 * Who holds which layer. A holder (`image:<id>`, `mount:<name>`) that acquires a chainID holds every layer of that
 * chain; the `refs` sublevel (keys `<chainID>|<holder>`) is derived data: the image and mount records name the layers
 * they use, and rebuildReferences() makes the image:/mount: refs match them again. Holders of any other kind are
 * left as they are. Writers run in the store's write lock.
 */
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import type { Digest } from './digest.js';
import { splitRefKey } from './recovery.js';
import type { LayerRefRecord } from './types.js';

/** What rebuildReferences() changed: `<chainID>|<holder>` keys. */
export interface ReferenceRepair {
  added: string[];
  removed: string[];
}

/** Holders whose references are rebuilt from records; any other holder kind is left as it is. */
const RECORDED_HOLDER = /^(image|mount):/;

/** Batch operations for `holder` holding (or not) each of `chainIDs`, e.g. a chain being committed in the same batch. */
export function refOpsFor(chainIDs: readonly Digest[], holder: string, type: 'put' | 'del'): BatchOp[] {
  validateHolder(holder);
  const since = new Date().toISOString();
  return chainIDs.map((chainID) => {
    const key = `${chainID}|${holder}`;
    return type === 'put'
      ? { type, sublevel: 'refs' as const, key, value: { chainID, holder, since } satisfies LayerRefRecord }
      : { type, sublevel: 'refs' as const, key };
  });
}

function validateHolder(holder: string): void {
  if (!/^[a-z]+:\S+$/.test(holder)) {
    throw new StrataError('STRATA_BAD_OPTION', `holder "${holder}" must look like "<kind>:<name>" (e.g. "mount:web")`);
  }
}

/**
 * Makes the image: and mount: references exactly what the image and mount records name (on existing layers).
 * Run in the store's write lock.
 */
export async function rebuildReferences(metastore: Metastore, log: Logger): Promise<ReferenceRepair> {
  const { add, remove } = await referenceDiff(metastore);
  const ops: BatchOp[] = [
    ...remove.map((key) => ({ type: 'del' as const, sublevel: 'refs' as const, key })),
    ...add.map((key) => {
      const [chainID, holder] = splitRefKey(key);
      return { type: 'put' as const, sublevel: 'refs' as const, key, value: { chainID, holder, since: new Date().toISOString() } satisfies LayerRefRecord };
    }),
  ];
  await metastore.batch(ops);
  if (ops.length > 0) log.warn({ added: add, removed: remove }, 'rebuilt layer references from the image and mount records');
  return { added: add, removed: remove };
}

/** Reference keys the records call for but `refs` lacks, and image:/mount: keys no record backs. One snapshot. */
export async function referenceDiff(metastore: Metastore): Promise<{ add: string[]; remove: string[] }> {
  const snap = await metastore.snapshot(['layers', 'refs', 'images', 'mounts']);
  const layers = new Set((snap.get('layers') ?? []).map(([key]) => key));
  const expected = new Set<string>();
  for (const [chainID, holders] of recordedHolders(snap)) {
    if (!layers.has(chainID)) continue;
    for (const holder of holders) expected.add(`${chainID}|${holder}`);
  }
  const present = new Set((snap.get('refs') ?? []).map(([key]) => key));
  const add = [...expected].filter((key) => !present.has(key)).sort();
  const remove = [...present].filter((key) => {
    const [chainID, holder] = splitRefKey(key);
    return !expected.has(key) && (RECORDED_HOLDER.test(holder) || !layers.has(chainID));
  }).sort();
  return { add, remove };
}

/** chainID -> holders named by image and mount records (whether or not a ref says so). */
export async function namedByRecords(metastore: Metastore): Promise<Map<Digest, string[]>> {
  return recordedHolders(await metastore.snapshot(['images', 'mounts']));
}

/**
 * chainID -> holders, as the image and mount records name them: image `id` holds its `chainIDs` as `image:<id>`,
 * mount `Name` holds its `LayerIds` as `mount:<Name>`.
 */
function recordedHolders(snap: Map<string, Array<[string, unknown]>>): Map<Digest, string[]> {
  const out = new Map<Digest, string[]>();
  const add = (chainIDs: unknown, holder: string) => {
    if (!Array.isArray(chainIDs)) return;
    for (const id of chainIDs) {
      if (typeof id !== 'string') continue;
      const list = out.get(id as Digest) ?? [];
      if (!list.includes(holder)) list.push(holder);
      out.set(id as Digest, list);
    }
  };
  for (const [, image] of snap.get('images') ?? []) {
    const img = image as { id?: string; chainIDs?: unknown };
    if (typeof img.id === 'string') add(img.chainIDs, `image:${img.id}`);
  }
  for (const [, mount] of snap.get('mounts') ?? []) {
    const m = mount as { Name?: string; LayerIds?: unknown };
    if (typeof m.Name === 'string') add(m.LayerIds, `mount:${m.Name}`);
  }
  return out;
}
