/**
 * Differential suite for layer stacks the main suite (differential.test.ts) does not build: kernel overlayfs is
 * still the oracle, mounted with the same options as the candidate, but each stack here has its own mounts.
 *
 *  - recycling: mount, mutate, unmount, then mount again with the old upper as the new top lower, for several
 *    rounds (what layer stores such as containers/storage do), so redirects, whiteouts, opaque dirs and origins
 *    written by one round are read from a lower layer by the next; a named scenario plus a seeded random one;
 *  - several filesystems: tmpfs lowers under an ext4 upper, and the reverse; inode identity across copy-up
 *    and across a remount.
 *
 * Each round's ops run interleaved on both sides and must give the same outcome; after each round (and after
 * a remount) the merged trees must match.
 */
import t, { type Test } from 'tap';
import path from 'node:path';
import { runOp, type Op, type OpContext } from '../helpers/ops.js';
import { randomRecycling, seedFromEnv } from '../helpers/random.js';
import { candidateKind, candidateMissing, runOk, Sandbox, type OverlayDirs, type OverlayKind } from '../helpers/sandbox.js';
import { buildLayer, diffTrees, snapshotTree, type LayerSpec } from '../helpers/tree.js';

const candidate = candidateKind();
const seed = seedFromEnv();
const MAX_DIVERGENCES_SHOWN = 12;

export interface Round {
  ops: Op[];
  /** Ops after both sides were unmounted and mounted again on the same dirs. */
  afterRemount?: Op[];
}

export interface StackShape {
  name: string;
  /** Base lower layers, top first. */
  lowers: LayerSpec[];
  /** Round r mounts the uppers of rounds r-1 .. 0 (newest on top) over the base lowers, with a fresh upper. */
  rounds: Round[];
  /** Which dirs live on a tmpfs of their own (the rest is on the sandbox's filesystem). */
  tmpfs?: { lowers?: boolean; upper?: boolean };
  /** Extra -o options, given to both sides. */
  options?: string[];
}

interface Side {
  kind: OverlayKind;
  base: string;
  lowerBase: string;
  upperBase: string;
  ctx: OpContext;
}

function mountTmpfs(box: Sandbox, dir: string): string {
  box.track(dir);
  runOk('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', dir]);
  return dir;
}

async function runOps(kernel: Side, cand: Side, ops: Op[]): Promise<string[]> {
  const divergences: string[] = [];
  for (const [i, op] of ops.entries()) {
    const expected = await runOp(kernel.ctx, op);
    const got = await runOp(cand.ctx, op);
    if (expected !== got) divergences.push(`#${i} ${JSON.stringify(op)}: kernel ${expected}, ${cand.kind} ${got}`);
  }
  return divergences.length > MAX_DIVERGENCES_SHOWN ? [...divergences.slice(0, MAX_DIVERGENCES_SHOWN), `... ${divergences.length - MAX_DIVERGENCES_SHOWN} more`] : divergences;
}

/** Runs one shape: builds identical lowers for both sides, then every round, comparing ops and trees. */
export async function runShape(t: Test, shape: StackShape): Promise<void> {
  const box = await Sandbox.create(t, `stack-${shape.name.slice(0, 24)}`);
  const makeSide = (kind: OverlayKind, label: string): Side => {
    const base = box.dir(label);
    const lowerBase = box.dir(`${label}/lowers`);
    const upperBase = box.dir(`${label}/uppers`);
    if (shape.tmpfs?.lowers) mountTmpfs(box, lowerBase);
    if (shape.tmpfs?.upper) mountTmpfs(box, upperBase);
    shape.lowers.forEach((spec, i) => buildLayer(path.join(lowerBase, `l${i}`), spec));
    return { kind, base, lowerBase, upperBase, ctx: { root: '', inodes: new Map(), devs: new Map() } };
  };
  const kernel = makeSide('kernel', 'k');
  const cand = makeSide(candidate, 'c');
  const dirsFor = (side: Side, round: number): OverlayDirs => {
    const uppers = Array.from({ length: round }, (_, r) => path.join(side.upperBase, `u${r}`)).reverse();
    const lowers = [...uppers, ...shape.lowers.map((_, i) => path.join(side.lowerBase, `l${i}`))];
    return { lowers, upper: box.dir(path.relative(box.root, path.join(side.upperBase, `u${round}`))), work: box.dir(path.relative(box.root, path.join(side.upperBase, `w${round}`))), mnt: box.dir(`${path.basename(side.base)}/mnt${round}`) };
  };
  const compareTrees = (tt: Test, label: string, kd: OverlayDirs, cd: OverlayDirs) => {
    tt.same(diffTrees(snapshotTree(kd.mnt), snapshotTree(cd.mnt)), [], `${label}: merged tree matches the kernel`);
  };

  for (const [r, round] of shape.rounds.entries()) {
    await t.test(`round ${r}`, async (tt) => {
      const kd = dirsFor(kernel, r);
      const cd = dirsFor(cand, r);
      box.mount('kernel', kd, shape.options);
      box.mount(candidate, cd, shape.options);
      kernel.ctx.root = kd.mnt;
      cand.ctx.root = cd.mnt;
      try {
        tt.same(await runOps(kernel, cand, round.ops), [], `round ${r}: every op gives the kernel's result`);
        compareTrees(tt, `round ${r}`, kd, cd);
        if (round.afterRemount) {
          box.unmount(kd.mnt);
          box.unmount(cd.mnt);
          box.mount('kernel', kd, shape.options);
          box.mount(candidate, cd, shape.options);
          tt.same(await runOps(kernel, cand, round.afterRemount), [], `round ${r}: every op after a remount gives the kernel's result`);
          compareTrees(tt, `round ${r} remounted`, kd, cd);
        }
      } finally {
        box.unmount(kd.mnt);
        box.unmount(cd.mnt);
      }
    });
  }
}

export const stackShapes: StackShape[] = [
  {
    // An old upper reused as a lower: its relative redirect must be followed from the absolute redirect the
    // next round writes, down to the bottom layer.
    name: 'recycled-upper-redirect-chain',
    lowers: [{
      'a/dir102/a': { type: 'file', content: 'A' }, 'a/empty102': { type: 'dir' }, 'b/x/deep/f': { type: 'file', content: 'deep' },
      'c/keep': { type: 'file', content: 'keep' }, 'c/gone': { type: 'file', content: 'gone' }, 'o/old': { type: 'file', content: 'old' },
    }],
    rounds: [
      { ops: [['rename', 'a/dir102', 'a/dir102x'], ['rename', 'b', 'b2'], ['unlink', 'c/gone'], ['rmdir', 'o'], ['rename', 'c', 'c2'], ['readdir', 'a']] },
      {
        ops: [
          ['readdir', 'a/dir102x'], ['rename', 'a/dir102x', 'a/empty102/dir102'], ['read', 'a/empty102/dir102/a'], ['readdir', 'a/empty102/dir102'],
          ['rename', 'b2/x', 'top-x'], ['read', 'top-x/deep/f'], ['readdir', 'c2'], ['stat', 'c2/gone'], ['mkdir', 'o'], ['readdir', 'o'],
          ['rename', 'c2', 'a/c3'], ['readdir', 'a/c3'],
        ],
      },
      {
        ops: [
          ['read', 'a/empty102/dir102/a'], ['rename', 'a/empty102/dir102', 'dir-at-root'], ['readdir', 'dir-at-root'], ['read', 'dir-at-root/a'],
          ['rename', 'top-x/deep', 'a/deep2'], ['read', 'a/deep2/f'], ['readdir', 'a/c3'], ['rename', 'a/c3', 'c'], ['readdir', 'c'], ['read', 'c/keep'],
          ['readdir', 'o'], ['readdir', '.'],
        ],
      },
    ],
  },
  {
    // The kernel keeps st_ino across copy-up when lowers and upper are on different filesystems (the lower
    // object's inode number with that layer's filesystem bits), and across a remount.
    name: 'tmpfs-lowers-ext4-upper',
    tmpfs: { lowers: true },
    lowers: [
      { 'd/top': { type: 'file', content: 't' }, 'm/q': { type: 'file', content: 'q' } },
      { f: { type: 'file', content: 'x' }, 'd/g': { type: 'file', content: 'y' }, s: { type: 'symlink', target: 'f' }, 'm/p': { type: 'file', content: 'p' }, h1: { type: 'file', content: 'h' }, h2: { type: 'hardlink', target: 'h1' }, ld: { type: 'dir' }, 'ld/x': { type: 'file' } },
    ],
    rounds: [{
      ops: [
        ['rememberIno', 'f', 'f0'], ['rememberIno', 'd', 'd0'], ['rememberIno', 'd/g', 'g0'], ['rememberIno', 's', 's0'], ['rememberIno', 'd/top', 'top0'],
        ['rememberIno', 'm', 'm0'], ['rememberIno', 'h1', 'h0'], ['rememberIno', 'ld', 'ld0'],
        ['writeAt', 'f', 0, 'z'], ['sameIno', 'f0', 'f'], ['sameDevIno', 'f0', 'f'], ['create', 'd/new', 'n'], ['sameIno', 'd0', 'd'], ['sameDevIno', 'd0', 'd'],
        ['chmod', 'd/g', 0o600], ['sameIno', 'g0', 'd/g'], ['lchown', 's', 3, 3], ['sameIno', 's0', 's'], ['rememberIno', 'd/new', 'new0'],
        ['rename', 'd/g', 'g2'], ['sameIno', 'g0', 'g2'], ['sameDevIno', 'g0', 'g2'], ['rename', 'm', 'm2'], ['sameIno', 'm0', 'm2'], ['readdir', 'm2'],
        ['link', 'd/top', 'top-link'], ['sameIno', 'top0', 'top-link'], ['sameIno', 'top0', 'd/top'],
        ['append', 'h2', '+'], ['sameIno', 'h0', 'h1'], ['sameIno', 'h1', 'h2'], ['rename', 'ld', 'ld2'], ['sameIno', 'ld0', 'ld2'],
        ['dirInoMatchesStat', '.'], ['dirInoMatchesStat', 'd'],
      ],
      // Directories are left out here: across filesystems without xino the kernel gives them non-persistent
      // numbers (allocated in lookup order), so the kernel's answer after a remount proves nothing.
      afterRemount: [
        ['sameIno', 'f0', 'f'], ['sameIno', 'g0', 'g2'], ['sameIno', 's0', 's'], ['sameIno', 'top0', 'd/top'], ['sameIno', 'top0', 'top-link'],
        ['sameIno', 'new0', 'd/new'], ['sameIno', 'h0', 'h1'], ['sameIno', 'h1', 'h2'], ['dirInoMatchesStat', '.'], ['dirInoMatchesStat', 'd'],
      ],
    }],
  },
  {
    name: 'ext4-lowers-tmpfs-upper',
    tmpfs: { upper: true },
    lowers: [
      { 'd/top': { type: 'file', content: 't' } },
      { f: { type: 'file', content: 'x' }, 'd/g': { type: 'file', content: 'y' }, ld: { type: 'dir' }, 'ld/x': { type: 'file' } },
    ],
    rounds: [{
      ops: [
        ['rememberIno', 'f', 'f0'], ['rememberIno', 'd', 'd0'], ['rememberIno', 'd/g', 'g0'], ['rememberIno', 'ld', 'ld0'], ['rememberIno', 'd/top', 'top0'],
        ['writeAt', 'f', 0, 'z'], ['sameIno', 'f0', 'f'], ['sameDevIno', 'f0', 'f'], ['create', 'd/new', 'n'], ['sameIno', 'd0', 'd'],
        ['rename', 'd/g', 'g2'], ['sameIno', 'g0', 'g2'], ['rename', 'ld', 'ld2'], ['sameIno', 'ld0', 'ld2'], ['link', 'd/top', 'tl'], ['sameIno', 'top0', 'tl'],
        ['dirInoMatchesStat', '.'], ['dirInoMatchesStat', 'd'],
      ],
      afterRemount: [['sameIno', 'f0', 'f'], ['sameIno', 'g0', 'g2'], ['sameIno', 'top0', 'tl'], ['dirInoMatchesStat', '.']],
    }],
  },
];

t.test(`differential stacks: kernel overlayfs vs ${candidate}`, async (t) => {
  const missing = candidateMissing();
  if (missing) {
    t.fail(`candidate ${candidate} cannot run: ${missing}`);
    return;
  }
  t.comment(`random recycling seed ${seed} (replay with STRATA_TEST_SEED=${seed})`);
  for (const shape of [...stackShapes, { name: `random-recycling-seed-${seed}`, ...randomRecycling(seed, 3, 150) }]) {
    await t.test(shape.name, async (tt) => runShape(tt, shape));
  }
});
