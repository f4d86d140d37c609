/**
 * `mount diff` and `mount commit`: from a mount's upper dir back to a change list or a new image.
 *
 * A commit is consistent while the mount stays live: the mount's writes are held (MountService.withMount, which
 * stops the helper) only while the upper is snapshotted with `cp -a --reflink=auto` into layer-tmp, a copy whose
 * cost is that of the upper (a reflink where the filesystem has them). The layer tar is then built from the
 * snapshot while the mount runs again, and goes through the layer store's ordinary import path (extracted and
 * hashed once into layer-tmp, committed in one batch with the image record, its name and its references).
 *
 * Nothing half-made is ever visible: until that batch, the only traces are the snapshot and the staged layer in
 * layer-tmp, which are deleted on failure and by start-up recovery after a crash.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MountRecord, MountService } from '../mounts/service.js';
import type { BatchOp, Metastore } from '../store/metastore.js';
import { diffUpper, type Change } from '../layers/diff.js';
import { writeLayerTar, type LayerTarStats } from '../layers/commit.js';
import { sha256Of, type Digest } from '../layers/digest.js';
import { refOpsFor, type LayerStore } from '../layers/layer-store.js';
import { holderOf, type ImageRecord, type ImageStore } from './image-store.js';
import { normalizeName, type ImageConfig } from './sources.js';

export interface CommitOptions {
  message?: string;
  /** Move the name from the image that has it now (otherwise STRATA_CONFLICT). */
  force?: boolean;
  /** Commit even when the upper holds no change (an empty layer). */
  allowEmpty?: boolean;
}

export interface CommitResult {
  Id: Digest;
  Name: string;
  /** chainID of the new layer, and its diffID. */
  LayerId: Digest;
  DiffID: Digest;
  ParentImage: Digest | null;
  Layers: number;
  /** Files and bytes read to build the layer, and lower names looked up (the O(change) figures). */
  Stats: LayerTarStats;
  /** Milliseconds the mount's writes were held (the snapshot), and spent building and storing the layer. */
  HeldMs: number;
  LayerMs: number;
}

export class CommitService {
  private readonly log: Logger;

  constructor(
    private readonly metastore: Metastore,
    private readonly mounts: MountService,
    private readonly images: ImageStore,
    private readonly layers: LayerStore,
    logger: Logger,
  ) {
    this.log = logger.child({ component: 'commit' });
  }

  /** The changes of a mount's upper over its layers, live or unmounted. */
  async diff(mount: string): Promise<Change[]> {
    return this.mounts.withMount(mount, false, async (record) => diffUpper(record.UpperDir, record.LowerDirs));
  }

  async commit(mount: string, ref: string, options: CommitOptions = {}): Promise<CommitResult> {
    const name = commitName(ref);
    await this.checkName(name, options.force === true);
    const snapshot = path.join(this.layers.tmpDir, `commit-${randomBytes(6).toString('hex')}`);
    await mkdir(snapshot, { mode: 0o700 });
    try {
      let heldMs = 0;
      const record = await this.mounts.withMount(mount, true, async (rec) => {
        checkCommittable(rec);
        const start = Date.now();
        await copyTree(rec.UpperDir, path.join(snapshot, 'upper'));
        heldMs = Date.now() - start;
        return rec;
      });
      const layerStart = Date.now();
      const upper = path.join(snapshot, 'upper');
      if (!options.allowEmpty && diffUpper(upper, []).length === 0) {
        throw new StrataError('STRATA_BAD_OPTION', `mount "${record.Name}" has no changes to commit (pass --change-free to commit an empty layer)`);
      }
      const source = record.Sources[0]!;
      // The image the mount was made from; if it has been removed since, the mount's layers are still held, and
      // the new image gets a minimal config over them.
      const parentImage = source.kind === 'image' && source.imageId !== undefined
        ? await this.images.resolve(source.imageId).catch((err: unknown) => {
          if (err instanceof StrataError && err.code === 'STRATA_NOT_FOUND') return null;
          throw err;
        })
        : null;
      const parentChain = [...source.layerIds].reverse() as Digest[];

      const tarOut = new PassThrough({ highWaterMark: 1 << 20 });
      const writing = writeLayerTar(upper, record.LowerDirs, tarOut).then((stats) => { tarOut.end(); return stats; }, (err: unknown) => { tarOut.destroy(err as Error); throw err; });
      let staged;
      try {
        staged = await this.layers.stageStream(tarOut, { what: `commit of mount ${record.Name}`, mediaType: 'application/vnd.oci.image.layer.v1.tar' });
      } catch (err) {
        tarOut.destroy(err as Error);
        await writing.catch(() => undefined);
        throw err;
      }
      const stats = await writing.catch(async (err: unknown) => { await this.layers.discard(staged); throw err; });
      const layerMs = Date.now() - layerStart;

      const now = new Date().toISOString();
      const parentConfig: Partial<ImageConfig> = parentImage?.config ?? { architecture: goArch(), os: 'linux' };
      const parentDiffIDs = parentImage?.diffIDs ?? (await Promise.all(parentChain.map(async (id) => (await this.layers.getRecord(id)).diffID)));
      const history = Array.isArray(parentConfig.history) ? [...(parentConfig.history as unknown[])] : [];
      history.push({ created: now, created_by: 'strata mount commit', ...(options.message === undefined ? {} : { comment: options.message }) });
      const config: ImageConfig = { ...parentConfig, created: now, rootfs: { type: 'layers', diff_ids: [...parentDiffIDs, staged.diffID] }, history };
      const id = sha256Of(JSON.stringify(config));

      await this.checkName(name, options.force === true);
      // The name moves from the image that has it (with --force), in the same batch.
      const ops: BatchOp[] = [];
      const owner = await this.metastore.get<Digest>('imageNames', name);
      if (owner !== undefined && owner !== id) {
        const other = await this.metastore.get<ImageRecord>('images', owner);
        if (other !== undefined) ops.push({ type: 'put', sublevel: 'images', key: owner, value: { ...other, names: other.names.filter((n) => n !== name) } });
      }
      let chainIDs: Digest[] = [];
      const [top] = await this.layers.commit(parentChain.at(-1) ?? null, [{ staged }], (newChain) => {
        chainIDs = [...parentChain, ...newChain];
        const image: ImageRecord = {
          id, names: [name], manifestDigest: null, manifest: null, config, diffIDs: config.rootfs.diff_ids, chainIDs,
          size: (parentImage?.size ?? 0) + staged.size, created: now, importedAt: now, source: 'oci-layout',
        };
        return [...ops, { type: 'put', sublevel: 'images', key: id, value: image }, { type: 'put', sublevel: 'imageNames', key: name, value: id }, ...refOpsFor(chainIDs, holderOf(id), 'put')];
      });
      this.log.info({ mount: record.Name, id, name, stats }, 'committed mount');
      return { Id: id, Name: name, LayerId: top!, DiffID: staged.diffID, ParentImage: parentImage?.id ?? null, Layers: chainIDs.length, Stats: stats, HeldMs: heldMs, LayerMs: layerMs };
    } catch (err) {
      throw explainSpace(err, `commit of mount ${mount}`, this.layers.rootDir);
    } finally {
      await rm(snapshot, { recursive: true, force: true });
    }
  }

  private async checkName(name: string, force: boolean): Promise<void> {
    const owner = await this.metastore.get<Digest>('imageNames', name);
    if (owner !== undefined && !force) {
      throw new StrataError('STRATA_CONFLICT', `image name ${name} is already taken by ${owner.slice(7, 19)}; pass --force to move it to the new image`);
    }
  }
}

/** A commit target: a repo[:tag] name (not an id or digest, which a commit cannot choose). */
function commitName(ref: string): string {
  if (ref.includes('@') || /^(sha256:)?[0-9a-f]{12,64}$/.test(ref)) {
    throw new StrataError('STRATA_BAD_OPTION', `"${ref}" is not a valid commit target: give a name as repo[:tag], not an id or digest`);
  }
  const name = normalizeName(ref);
  const repo = name.slice(0, name.lastIndexOf(':'));
  if (repo !== repo.toLowerCase() || /\/\/|[._-]$|[._-]\/|\/[._-]/.test(repo)) {
    throw new StrataError('STRATA_BAD_OPTION', `"${ref}" is not a valid image name: use a lowercase repo[:tag] (e.g. myimage:v1)`);
  }
  return name;
}

function checkCommittable(record: MountRecord): void {
  if (record.Sources.length !== 1 || record.Sources[0]!.kind === 'dir') {
    throw new StrataError('STRATA_UNSUPPORTED', `mount "${record.Name}" is not stacked on exactly one image or layer (its sources: ${record.Sources.map((s) => s.reference).join(', ')}); only such a mount can be committed as a new image`);
  }
}

/** `cp -a --reflink=auto`: owners, modes, times, xattrs (trusted.* as root), hard links and device nodes kept. */
async function copyTree(from: string, to: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn('cp', ['-a', '--reflink=auto', '--no-target-directory', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve();
      const err = new StrataError('STRATA_INTERNAL', `cannot snapshot the upper dir ${from}: ${stderr.trim() || `cp exited ${code}`}`);
      if (/No space left on device/i.test(stderr)) Object.assign(err, { errnoCode: 'ENOSPC' });
      reject(err);
    });
  });
}

/** A full disk is reported as ENOSPC with what failed and that nothing was made. */
export function explainSpace(err: unknown, what: string, where: string): unknown {
  const e = err as { code?: string; errnoCode?: string; message?: string };
  if (e.code === 'ENOSPC' || e.errnoCode === 'ENOSPC') {
    const out = new Error(`${what} failed: no space left on the device of ${where}; nothing was made (free space and retry)`);
    Object.assign(out, { code: 'ENOSPC', cause: err });
    return out;
  }
  return err;
}

function goArch(): string {
  return ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x' } as Record<string, string>)[process.arch] ?? process.arch;
}
