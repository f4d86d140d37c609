/**
 * Merged directory listings (fs/overlayfs/readdir.c). Each name appears once, from the topmost layer that
 * has it; whiteouts hide the name in every layer below and are never listed. d_ino is the same number
 * getattr reports, which for objects in the upper layer means asking lookup (their origin decides it).
 */
import { sys, StatIndex } from '../native/index.js';
import { S_IFDIR, S_IFMT, type UnionEntry } from './layer.js';
import { isWhiteoutStat, layerIno, type LookupContext } from './lookup.js';

const DT_UNKNOWN = 0;
const DT_CHR = 2;

/** d_type to S_IF* file type bits. */
const TYPE_BY_DT: Record<number, number> = {
  1: 0o010000, 2: 0o020000, 4: 0o040000, 6: 0o060000, 8: 0o100000, 10: 0o120000, 12: 0o140000,
};

export interface MergedEntry {
  name: string;
  /** S_IF* type bits. */
  type: number;
  ino: number;
}

/**
 * Lists `dir` as the merged view shows it. `resolveChild` is the cached lookup, used for the names whose
 * top object is in the upper layer.
 */
export function listMerged(
  ctx: LookupContext,
  dir: UnionEntry,
  resolveChild: (parent: UnionEntry, name: string) => UnionEntry | undefined,
): MergedEntry[] {
  const layerDirs = [dir.top, ...dir.lowers];
  const hidden = new Set<string>();
  const result: MergedEntry[] = [];
  const seen = new Set<string>();
  const stat = ctx.statBuf;
  for (const layerDir of layerDirs) {
    let listing;
    try {
      listing = sys.readdirIno(layerDir.real);
    } catch {
      continue; // a lower dir that vanished or is unreadable contributes nothing
    }
    const { names, types, inos } = listing;
    for (let i = 0; i < names.length; i++) {
      const name = names[i] as string;
      if (seen.has(name) || hidden.has(name)) continue;
      let dt = types[i] ?? DT_UNKNOWN;
      if (dt === DT_CHR || dt === DT_UNKNOWN) {
        if (sys.lstatRaw(`${layerDir.real}/${name}`, stat) < 0) continue;
        if (isWhiteoutStat(stat)) {
          hidden.add(name);
          continue;
        }
        if (dt === DT_UNKNOWN) dt = dtOfMode(stat[StatIndex.mode] ?? 0);
      }
      seen.add(name);
      const type = TYPE_BY_DT[dt] ?? 0;
      let ino: number;
      if (layerDir.layer.isUpper) {
        let child: UnionEntry | undefined;
        try {
          child = resolveChild(dir, name);
        } catch {
          // As the kernel (ovl_cache_update): a name that cannot be looked up (a refused redirect, say) is
          // left out of the listing rather than failing it.
          child = undefined;
        }
        if (!child) continue;
        ino = child.ino;
      } else {
        ino = layerIno(ctx, layerDir.layer, inos[i] ?? 0);
      }
      result.push({ name, type, ino });
    }
  }
  return result;
}

function dtOfMode(mode: number): number {
  const type = mode & S_IFMT;
  for (const [dt, bits] of Object.entries(TYPE_BY_DT)) if (bits === type) return Number(dt);
  return DT_UNKNOWN;
}

/** True when the merged view of `dir` has no entries (whiteouts do not count). Stops at the first visible name. */
export function isMergedEmpty(ctx: LookupContext, dir: UnionEntry): boolean {
  if (dir.type !== S_IFDIR) return false;
  const hidden = new Set<string>();
  for (const layerDir of [dir.top, ...dir.lowers]) {
    let names: string[];
    try {
      names = sys.readdirIno(layerDir.real).names;
    } catch {
      continue;
    }
    for (const name of names) {
      if (hidden.has(name)) continue;
      if (sys.lstatRaw(`${layerDir.real}/${name}`, ctx.statBuf) < 0) continue;
      if (!isWhiteoutStat(ctx.statBuf)) return false;
      hidden.add(name);
    }
  }
  return true;
}
