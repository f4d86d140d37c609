/**
 * Whole-store maintenance behind `strata fsck [--repair]`, `strata system prune --lost|--retained` and the
 * reclaimable-data part of `strata info`. It only composes the stores' own checks: each one runs inside the write
 * queue of the store it checks, so a repair never races a create or a removal.
 */
import type { FsckProblem, LayerStore } from '../layers/layer-store.js';
import type { MountService } from '../mounts/service.js';
import type { VolumeService } from '../volumes/service.js';
import type { LostAndFound, ReclaimableEntry } from './lost-found.js';
import type { Metastore } from './metastore.js';

export interface FsckReport {
  Repair: boolean;
  Problems: FsckProblem[];
  /** Problems left that need a user (or, without --repair, that --repair would fix). */
  Remaining: number;
  /** Why the metadata store refuses changes, or null. */
  StoreError: string | null;
}

export interface ReclaimableReport {
  LostAndFound: ReclaimableEntry[];
  RetainedUppers: ReclaimableEntry[];
}

export class StoreMaintenance {
  constructor(
    private readonly metastore: Metastore,
    private readonly layers: LayerStore,
    private readonly mounts: MountService,
    readonly lostAndFound: LostAndFound,
    private readonly volumes?: VolumeService,
  ) {}

  async fsck(repair: boolean): Promise<FsckReport> {
    const problems = [...(await this.mounts.fsck(repair)), ...(await this.layers.fsck(repair))];
    if (this.volumes !== undefined) problems.push(...(await this.volumes.fsck(repair)));
    return fsckReport(repair, problems, this.storeError());
  }

  storeError(): string | null {
    return this.metastore.failed?.message ?? null;
  }

  async reclaimable(): Promise<ReclaimableReport> {
    return { LostAndFound: await this.lostAndFound.listLost(), RetainedUppers: await this.lostAndFound.listRetained() };
  }

  async prune(what: { lost: boolean; retained: boolean; only?: string[] }): Promise<{ DeletedLost: string[]; DeletedRetained: string[] }> {
    return {
      DeletedLost: what.lost ? await this.lostAndFound.pruneLost(what.only) : [],
      DeletedRetained: what.retained ? await this.lostAndFound.pruneRetained(what.only) : [],
    };
  }
}

export function fsckReport(repair: boolean, problems: FsckProblem[], storeError: string | null): FsckReport {
  return { Repair: repair, Problems: problems, Remaining: problems.filter((p) => !p.repaired).length, StoreError: storeError };
}
