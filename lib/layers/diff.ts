/**
 * `mount diff`: the changes an upper dir holds over its lower layers, in `docker diff` form.
 *
 * Rules (the kernel's on-disk format is the source of truth, see docs/commit-export.md):
 *  - a whiteout (char 0/0) is `D` of its name;
 *  - an entry a lower layer also shows is `C`, any other `A`;
 *  - an opaque dir is `C` (or `A` if new) plus `D` for every lower name it hides and does not re-create;
 *  - a redirected (renamed) dir is `A` with everything it contains in the merged view; its old name is `D`
 *    through the whiteout the rename left there;
 *  - the kernel's bookkeeping (trusted.overlay.* xattrs, the index in workdir) is never shown.
 * Only names the upper holds are looked up in the lowers; an opaque or redirected dir also lists its lower dir.
 */
import path from 'node:path';
import { LowerView, isOpaque, isWhiteout, lstatOrNull, redirectOf, redirectOrigin, sortedNames } from './overlay-walk.js';

export type ChangeKind = 'A' | 'C' | 'D';

export interface Change {
  Kind: ChangeKind;
  /** Absolute path in the merged view. */
  Path: string;
}

/** The changes of `upperDir` over `lowerDirs` (top first), sorted by path. */
export function diffUpper(upperDir: string, lowerDirs: readonly string[]): Change[] {
  const lower = new LowerView(lowerDirs);
  const changes = new Map<string, ChangeKind>();
  const note = (rel: string, kind: ChangeKind) => {
    // A name deleted and re-created in one upper shows as changed, never as both.
    const before = changes.get(rel);
    changes.set(rel, before !== undefined && before !== kind ? 'C' : kind);
  };

  const walk = (upper: string, rel: string) => {
    for (const name of sortedNames(upper)) {
      const real = path.join(upper, name);
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const st = lstatOrNull(real);
      if (st === null) continue;
      if (isWhiteout(st)) {
        note(childRel, 'D');
        continue;
      }
      const inLower = lower.entry(childRel) !== null;
      if (!st.isDirectory()) {
        note(childRel, inLower ? 'C' : 'A');
        continue;
      }
      const redirect = redirectOf(real);
      if (redirect !== null) {
        note(childRel, 'A');
        addAll(real, redirectOrigin(redirect, rel), childRel);
        continue;
      }
      note(childRel, inLower ? 'C' : 'A');
      if (inLower && isOpaque(real)) {
        const present = new Set(sortedNames(real));
        for (const hidden of lower.list(childRel).keys()) if (!present.has(hidden)) note(`${childRel}/${hidden}`, 'D');
      }
      walk(real, childRel);
    }
  };

  /** Everything in the merged dir made of `upper` (may be null) over merged lower dir `lowerRel` (may be null), as `A`. */
  const addAll = (upper: string | null, lowerRel: string | null, rel: string) => {
    const lowerNames = lowerRel === null || (upper !== null && isOpaque(upper)) ? new Map<string, string>() : lower.list(lowerRel);
    const names = new Set([...(upper === null ? [] : sortedNames(upper)), ...lowerNames.keys()]);
    for (const name of names) {
      const childRel = `${rel}/${name}`;
      const real = upper === null ? null : path.join(upper, name);
      const st = real === null ? null : lstatOrNull(real);
      if (st !== null && isWhiteout(st)) continue;
      const childLower = lowerRel === null ? null : `${lowerRel}/${name}`;
      note(childRel, 'A');
      if (st !== null && real !== null) {
        if (!st.isDirectory()) continue;
        const redirect = redirectOf(real);
        addAll(real, redirect !== null ? redirectOrigin(redirect, lowerRel ?? rel) : lowerNames.has(name) ? childLower : null, childRel);
      } else if (childLower !== null && lower.dirStack(childLower) !== null) {
        addAll(null, childLower, childRel);
      }
    }
  };

  walk(upperDir, '');
  return [...changes].map(([rel, kind]) => ({ Kind: kind, Path: `/${rel}` })).sort((a, b) => (a.Path < b.Path ? -1 : a.Path > b.Path ? 1 : 0));
}
