/**
 * The layer store's crash recovery and fsck, on the view of the store that LayerStore gives them (its dirs, its
 * records, its reference diff). Both run in the store's write lock (LayerStore.recover and LayerStore.fsck).
 */
import { readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.js';
import { type LostAndFound, fsyncDir } from '../store/lost-found.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import type { Digest } from './digest.js';
import { placeOf } from './ingest.js';
import type { LayerContentRecord, LayerRecord, LayerRefRecord } from './types.js';

/** What recover() did: diffIDs whose rename it finished, records it dropped, dirs it deleted or quarantined. */
export interface RecoveryReport {
  rolledForward: string[];
  droppedRecords: string[];
  /** Staging and trash dirs of layer-tmp, and blobs of layers since extracted (no user data). */
  deletedDirs: string[];
  /** Content dirs without a record, moved to lost+found (their new paths). */
  quarantined: string[];
}

/** A finding of fsck(): what is wrong, and what --repair did or would do about it. */
export interface FsckProblem {
  subject: string;
  problem: string;
  /** What --repair does, or null if it cannot be repaired without losing data (a user must act). */
  repair: string | null;
  repaired: boolean;
}

/** What recovery and fsck need of the store. */
export interface RecoveryView {
  metastore: Metastore;
  layersDir: string;
  blobsDir: string;
  tmpDir: string;
  lostAndFound: LostAndFound;
  log: Logger;
  contents(): Promise<LayerContentRecord[]>;
  records(): Promise<LayerRecord[]>;
  /** `<chainID>|<holder>` ref keys the image and mount records call for (add) or do not back (remove). */
  referenceDiff(): Promise<{ add: string[]; remove: string[] }>;
}

/**
 * Brings disk and database back in line after a crash: finishes committed renames, drops records whose
 * content is gone (and chains and references built on them), deletes staged dirs and unrecorded content.
 * Packed content is the same with layer-blobs/ for layers/; a blob whose content has since been extracted (a
 * crash before the blob was deleted) is deleted, and a blob no record names goes to lost+found like a dir.
 */
export async function recoverLayerStore(d: RecoveryView): Promise<RecoveryReport> {
  const rolledForward: string[] = [];
  const droppedRecords: string[] = [];
  const deletedDirs: string[] = [];
  const quarantined: string[] = [];
  const onDisk = new Set(await readdir(d.layersDir));
  const blobsOnDisk = new Set(await readdir(d.blobsDir));
  const staged = new Set(await readdir(d.tmpDir));
  const ops: BatchOp[] = [];
  const liveContents = new Set<Digest>();
  const keepDirs = new Set<string>();
  const keepBlobs = new Set<string>();
  const contents = await d.contents();
  for (const content of contents) {
    const packed = content.packed === true;
    const keep = packed ? keepBlobs : keepDirs;
    if ((packed ? blobsOnDisk : onDisk).has(content.dirName)) {
      liveContents.add(content.diffID);
      keep.add(content.dirName);
      if (content.stagingName !== undefined) {
        const { stagingName: _done, ...placed } = content;
        ops.push({ type: 'put', sublevel: 'layerContents', key: content.diffID, value: placed });
      }
    } else if (content.stagingName !== undefined && staged.has(content.stagingName)) {
      await rename(path.join(d.tmpDir, content.stagingName), placeOf(d, content));
      staged.delete(content.stagingName);
      const { stagingName: _done, ...placed } = content;
      ops.push({ type: 'put', sublevel: 'layerContents', key: content.diffID, value: placed });
      liveContents.add(content.diffID);
      keep.add(content.dirName);
      rolledForward.push(content.diffID);
    } else {
      ops.push({ type: 'del', sublevel: 'layerContents', key: content.diffID });
      droppedRecords.push(`content ${content.diffID}`);
    }
  }
  // Chains whose content or parent is gone cannot be mounted: drop them, parents before children.
  const records = (await d.records()).sort((a, b) => a.depth - b.depth);
  const liveChains = new Set<Digest>();
  for (const r of records) {
    if (liveContents.has(r.diffID) && (r.parent === null || liveChains.has(r.parent))) {
      liveChains.add(r.chainID);
    } else {
      ops.push({ type: 'del', sublevel: 'layers', key: r.chainID });
      droppedRecords.push(`layer ${r.chainID}`);
    }
  }
  for (const [key, ref] of await d.metastore.entries<LayerRefRecord>('refs')) {
    if (!liveChains.has(ref.chainID)) ops.push({ type: 'del', sublevel: 'refs', key });
  }
  await d.metastore.batch(ops);
  if (rolledForward.length > 0) {
    await fsyncDir(d.layersDir);
    await fsyncDir(d.blobsDir);
  }
  for (const name of staged) {
    await rm(path.join(d.tmpDir, name), { recursive: true, force: true });
    deletedDirs.push(path.join(d.tmpDir, name));
  }
  for (const name of onDisk) {
    if (keepDirs.has(name)) continue;
    quarantined.push(await d.lostAndFound.quarantine(path.join(d.layersDir, name), 'layer', name, 'no layer content record names this dir'));
  }
  const extracted = new Set(contents.filter((c) => c.packed !== true && keepDirs.has(c.dirName)).map((c) => c.dirName));
  for (const name of blobsOnDisk) {
    if (keepBlobs.has(name)) continue;
    if (extracted.has(name)) {
      await rm(path.join(d.blobsDir, name), { force: true });
      deletedDirs.push(path.join(d.blobsDir, name));
    } else {
      quarantined.push(await d.lostAndFound.quarantine(path.join(d.blobsDir, name), 'layer-blob', name, 'no packed layer record names this blob'));
    }
  }
  if (rolledForward.length + droppedRecords.length + deletedDirs.length + quarantined.length > 0) {
    d.log.warn({ rolledForward, droppedRecords, deletedDirs, quarantined }, 'recovered layer store after an interrupted change');
  }
  return { rolledForward, droppedRecords, deletedDirs, quarantined };
}

/**
 * Checks the layer, reference, image and mount records against each other and against layers/. With `repair`,
 * fixes what needs no data to be given up: finishes an interrupted rename, clears a stale stagingName, moves
 * unrecorded content dirs to lost+found, adds and removes references to match the records, drops image names
 * pointing at no image. Records whose content is gone are only reported: fixing them needs the image again.
 */
export async function fsckLayerStore(d: RecoveryView, repair: boolean): Promise<FsckProblem[]> {
  const problems: FsckProblem[] = [];
  const ops: BatchOp[] = [];
  const moves: Array<() => Promise<void>> = [];
  const note = (subject: string, problem: string, fix: string | null, action?: () => Promise<void>, fixOps: BatchOp[] = []) => {
    problems.push({ subject, problem, repair: fix, repaired: false });
    if (fix !== null && repair) {
      ops.push(...fixOps);
      if (action !== undefined) moves.push(action);
    }
  };
  const snap = await d.metastore.snapshot(['layers', 'layerContents', 'images', 'imageNames', 'mounts']);
  const contents = (snap.get('layerContents') ?? []).map(([, v]) => v as LayerContentRecord);
  const layerRecords = (snap.get('layers') ?? []).map(([, v]) => v as LayerRecord);
  const onDisk = new Set(await readdir(d.layersDir));
  const blobsOnDisk = new Set(await readdir(d.blobsDir));
  const staged = new Set(await readdir(d.tmpDir));
  const recordedDirs = new Set(contents.filter((c) => c.packed !== true).map((c) => c.dirName));
  const recordedBlobs = new Set(contents.filter((c) => c.packed === true).map((c) => c.dirName));
  for (const c of contents) {
    const dir = placeOf(d, c);
    const { stagingName: _s, ...placed } = c;
    const clear: BatchOp = { type: 'put', sublevel: 'layerContents', key: c.diffID, value: placed };
    if (!(c.packed === true ? blobsOnDisk : onDisk).has(c.dirName)) {
      if (c.stagingName !== undefined && staged.has(c.stagingName)) {
        note(`content ${c.diffID}`, 'a committed import was never moved into place', `finish moving it into ${path.basename(path.dirname(dir))}/`,
          async () => { await rename(path.join(d.tmpDir, c.stagingName!), dir); await fsyncDir(path.dirname(dir)); }, [clear]);
      } else {
        note(`content ${c.diffID}`, `its dir ${dir} is missing`, null);
      }
    } else if (c.stagingName !== undefined) {
      note(`content ${c.diffID}`, 'stagingName is still set although the dir is in place', 'clear stagingName', undefined, [clear]);
    }
  }
  for (const name of [...onDisk].sort()) {
    if (recordedDirs.has(name)) continue;
    const dir = path.join(d.layersDir, name);
    note(dir, 'no layer content record names this dir', 'move it to lost+found',
      async () => { await d.lostAndFound.quarantine(dir, 'layer', name, 'fsck: no layer content record names this dir'); });
  }
  for (const name of [...blobsOnDisk].sort()) {
    if (recordedBlobs.has(name)) continue;
    const blob = path.join(d.blobsDir, name);
    if (recordedDirs.has(name)) {
      note(blob, 'the blob of a layer already extracted was not deleted', 'delete it', async () => { await rm(blob, { force: true }); });
    } else {
      note(blob, 'no packed layer record names this blob', 'move it to lost+found',
        async () => { await d.lostAndFound.quarantine(blob, 'layer-blob', name, 'fsck: no packed layer record names this blob'); });
    }
  }
  const chains = new Set(layerRecords.map((r) => r.chainID));
  const contentIds = new Set(contents.map((c) => c.diffID));
  for (const r of layerRecords) {
    if (!contentIds.has(r.diffID)) note(`layer ${r.chainID}`, `its content record ${r.diffID} is missing`, null);
    if (r.parent !== null && !chains.has(r.parent)) note(`layer ${r.chainID}`, `its parent layer ${r.parent} is missing`, null);
  }
  const { add, remove } = await d.referenceDiff();
  for (const key of add) {
    const [chainID, holder] = splitRefKey(key);
    note(`layer ${chainID}`, `${holder} uses it but holds no reference`, 'add the reference', undefined,
      [{ type: 'put', sublevel: 'refs', key, value: { chainID, holder, since: new Date().toISOString() } satisfies LayerRefRecord }]);
  }
  for (const key of remove) {
    const [chainID, holder] = splitRefKey(key);
    note(`layer ${chainID}`, `reference by ${holder}, which no record backs`, 'remove the reference', undefined, [{ type: 'del', sublevel: 'refs', key }]);
  }
  const images = new Map((snap.get('images') ?? []).map(([k, v]) => [k, v as { id: string; chainIDs: Digest[] }]));
  for (const image of images.values()) {
    const missing = image.chainIDs.filter((id) => !chains.has(id));
    if (missing.length > 0) note(`image ${image.id}`, `layers ${missing.join(', ')} are missing`, null);
  }
  for (const [name, id] of snap.get('imageNames') ?? []) {
    if (!images.has(id as string)) note(`image name ${name}`, `it points at image ${String(id)}, which does not exist`, 'remove the name', undefined, [{ type: 'del', sublevel: 'imageNames', key: name }]);
  }
  for (const [, value] of snap.get('mounts') ?? []) {
    const m = value as { Name: string; LayerIds?: Digest[] };
    const missing = (m.LayerIds ?? []).filter((id) => !chains.has(id));
    if (missing.length > 0) note(`mount ${m.Name}`, `layers ${missing.join(', ')} are missing; import its image again`, null);
  }
  if (repair) {
    // Disk first (a rename into place, a move to lost+found), then the records that describe the result.
    for (const move of moves) await move();
    await d.metastore.batch(ops);
    for (const p of problems) p.repaired = p.repair !== null;
  }
  return problems;
}

/** A `refs` key `<chainID>|<holder>`, split. */
export function splitRefKey(key: string): [Digest, string] {
  const bar = key.indexOf('|');
  return [key.slice(0, bar) as Digest, key.slice(bar + 1)];
}
