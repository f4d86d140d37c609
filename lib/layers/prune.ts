/**
 * Garbage collection: removing one layer, and pruning every layer nothing uses. A layer with holders (refs), child
 * layers, or an image or mount record naming it is never removed (STRATA_IN_USE, naming them), whatever the refs
 * say. Removal is an import in reverse: one batch deletes the records, then the content dir is renamed into
 * layer-tmp and deleted (recovery.ts finishes a crash in between). Both run in the store's write lock.
 */
import { randomBytes } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { StrataError, isErrno } from '../errors.js';
import type { Logger } from '../log.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import type { Digest } from './digest.js';
import type { LayerQueries } from './queries.js';
import { namedByRecords } from './references.js';
import type { LayerRefRecord } from './types.js';

/** What removal needs of the store. */
export interface PruneContext {
  metastore: Metastore;
  queries: LayerQueries;
  layersDir: string;
  blobsDir: string;
  tmpDir: string;
  log: Logger;
}

/** Removes every layer that no holder and no child layer uses, repeatedly (children first). Returns them. */
export async function pruneLayers(ctx: PruneContext): Promise<Digest[]> {
  const removed: Digest[] = [];
  for (;;) {
    const records = await ctx.queries.records();
    const held = new Set((await ctx.metastore.entries<LayerRefRecord>('refs')).map(([, r]) => r.chainID));
    const named = await namedByRecords(ctx.metastore);
    for (const chainID of named.keys()) held.add(chainID);
    const parents = new Set(records.map((r) => r.parent));
    const unused = records.filter((r) => !held.has(r.chainID) && !parents.has(r.chainID));
    if (unused.length === 0) return removed;
    for (const r of unused) {
      await removeLayer(ctx, r.chainID, named);
      removed.push(r.chainID);
    }
  }
}

/**
 * Removes one layer; fails with STRATA_IN_USE naming its holders or child layers.
 * `named`: namedByRecords(), when the caller (prune) has just read it.
 */
export async function removeLayer(ctx: PruneContext, chainID: Digest, named?: Map<Digest, string[]>): Promise<void> {
  const record = await ctx.queries.getRecord(chainID);
  const holders = [...new Set([...(await ctx.queries.holders(chainID)), ...((named ?? (await namedByRecords(ctx.metastore))).get(chainID) ?? [])])].sort();
  const records = await ctx.queries.records();
  const children = records.filter((r) => r.parent === chainID).map((r) => `layer:${r.chainID}`);
  if (holders.length > 0 || children.length > 0) {
    throw new StrataError('STRATA_IN_USE', `layer ${chainID} is in use by ${[...holders, ...children].join(', ')}`);
  }
  const ops: BatchOp[] = [{ type: 'del', sublevel: 'layers', key: chainID }];
  const contentShared = records.some((r) => r.chainID !== chainID && r.diffID === record.diffID);
  const content = contentShared ? undefined : await ctx.queries.getContent(record.diffID);
  if (content !== undefined) ops.push({ type: 'del', sublevel: 'layerContents', key: record.diffID });
  await ctx.metastore.batch(ops);
  // A packed layer is one file: deleting it is as atomic as the rename out of layers/.
  if (content?.packed === true) await rm(path.join(ctx.blobsDir, content.dirName), { force: true });
  else if (content !== undefined) await deleteContentDir(ctx, content.dirName);
  ctx.log.info({ chainID, contentDeleted: content !== undefined }, 'removed layer');
}

/** Old data goes last: move out of layers/ (atomic), then delete at leisure; recover() finishes a crash here. */
async function deleteContentDir(ctx: PruneContext, dirName: string): Promise<void> {
  const trash = path.join(ctx.tmpDir, `trash-${dirName}-${randomBytes(4).toString('hex')}`);
  try {
    await rename(path.join(ctx.layersDir, dirName), trash);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  await rm(trash, { recursive: true, force: true });
}
