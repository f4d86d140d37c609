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
import { buildLayer, diffTrees, snapshotTree, type LayerSpec, type TreeSnapshot } from '../helpers/tree.js';

const candidate = candidateKind();
const seed = seedFromEnv();
const MAX_DIVERGENCES_SHOWN = 12;

export interface Round {
  ops: Op[];
  /** -o options of this round (default: the shape's). */
  options?: string[];
  /** Mount the previous round's upper and workdir again (over the same lowers) instead of stacking a fresh upper. */
  reuseUpper?: boolean;
  /** Ops after both sides were unmounted and mounted again on the same dirs. */
  afterRemount?: Op[];
}

export interface StackShape {
  name: string;
  /** Base lower layers, top first. */
  lowers: LayerSpec[];
  /** Round r mounts the uppers of earlier rounds (newest on top) over the base lowers, with a fresh upper. */
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

/**
 * Private xattrs are only visible when a round mounts an upper written with other xattr names (userxattr)
 * without that option. Origins are file handles of each side's own lower inodes, so their bytes differ
 * legitimately: only their presence is compared. Bookkeeping Strata does not write is left out: `impure`
 * (a readdir hint), `uuid` and the origin of the upper root (both recorded by the kernel at mount time).
 */
function maskOrigins(snapshot: TreeSnapshot): TreeSnapshot {
  for (const [rel, entry] of Object.entries(snapshot)) {
    for (const name of Object.keys(entry.xattrs)) {
      if (/overlay\.(impure|uuid)$/.test(name) || (rel === '' && name.endsWith('overlay.origin'))) delete entry.xattrs[name];
      else if (name.endsWith('overlay.origin')) entry.xattrs[name] = 'present';
    }
  }
  return snapshot;
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
  // Upper number of each round: a round that reuses the previous upper mounts it over the same lowers.
  const upperOf: number[] = [];
  for (const [r, round] of shape.rounds.entries()) upperOf.push(round.reuseUpper && r > 0 ? upperOf[r - 1]! : r);
  const dirsFor = (side: Side, round: number): OverlayDirs => {
    const u = upperOf[round]!;
    const below = [...new Set(upperOf.slice(0, round).filter((x) => x !== u))].reverse();
    const lowers = [...below.map((x) => path.join(side.upperBase, `u${x}`)), ...shape.lowers.map((_, i) => path.join(side.lowerBase, `l${i}`))];
    return {
      lowers,
      upper: box.dir(path.relative(box.root, path.join(side.upperBase, `u${u}`))),
      work: box.dir(path.relative(box.root, path.join(side.upperBase, `w${u}`))),
      mnt: box.dir(`${path.basename(side.base)}/mnt${round}`),
    };
  };
  const compareTrees = (tt: Test, label: string, kd: OverlayDirs, cd: OverlayDirs) => {
    tt.same(diffTrees(maskOrigins(snapshotTree(kd.mnt)), maskOrigins(snapshotTree(cd.mnt))), [], `${label}: merged tree matches the kernel`);
  };

  for (const [r, round] of shape.rounds.entries()) {
    await t.test(`round ${r}`, async (tt) => {
      const kd = dirsFor(kernel, r);
      const cd = dirsFor(cand, r);
      const options = round.options ?? shape.options;
      box.mount('kernel', kd, options);
      box.mount(candidate, cd, options);
      kernel.ctx.root = kd.mnt;
      cand.ctx.root = cd.mnt;
      try {
        tt.same(await runOps(kernel, cand, round.ops), [], `round ${r}: every op gives the kernel's result`);
        compareTrees(tt, `round ${r}`, kd, cd);
        if (round.afterRemount) {
          box.unmount(kd.mnt);
          box.unmount(cd.mnt);
          box.mount('kernel', kd, options);
          box.mount(candidate, cd, options);
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

/** Kernel overlayfs mount options, each with the same options on both sides (and on and off where both exist). */
export const optionShapes: StackShape[] = [
  {
    // Renaming a merged or lower dir is EXDEV unless redirect_dir=on (mv then copies); redirects already in an
    // upper are still followed (follow, and off with the kernel's redirect_always_follow=Y).
    name: 'redirect-dir-follow-and-off',
    lowers: [
      { 'md/top': { type: 'file', content: 'top' } },
      { 'ld/x': { type: 'file', content: 'x' }, 'ld/sub/y': { type: 'file', content: 'y' }, 'md/bottom': { type: 'file', content: 'b' }, 'moved/z': { type: 'file', content: 'z' } },
    ],
    rounds: [
      { options: ['redirect_dir=on'], ops: [['rename', 'moved', 'moved2'], ['readdir', 'moved2']] },
      {
        options: ['redirect_dir=follow'], reuseUpper: true,
        ops: [
          ['readdir', 'moved2'], ['read', 'moved2/z'], ['rename', 'moved2', 'moved3'], ['rename', 'ld', 'ld2'], ['rename', 'md', 'md2'], ['rename', 'ld/sub', 'sub2'],
          ['mkdir', 'fresh'], ['create', 'fresh/f', 'f'], ['rename', 'fresh', 'fresh2'], ['readdir', 'fresh2'], ['mv', 'ld', 'ld-mv'], ['readdir', 'ld-mv'], ['stat', 'ld'],
          ['read', 'ld-mv/sub/y'], ['rename', 'ld/x', 'x2'], ['rename', 'md', 'md/inside'], ['readdir', '.'],
        ],
      },
      { options: ['redirect_dir=off'], reuseUpper: true, ops: [['readdir', 'moved2'], ['rename', 'md', 'md3'], ['mv', 'md', 'md-mv'], ['readdir', 'md-mv'], ['rename', 'fresh2', 'fresh3']] },
    ],
  },
  {
    // nofollow: redirects are neither created nor followed.
    name: 'redirect-dir-nofollow',
    lowers: [{ 'ld/x': { type: 'file', content: 'x' }, 'moved/z': { type: 'file', content: 'z' } }],
    rounds: [
      { ops: [['rename', 'moved', 'moved2'], ['readdir', 'moved2']] },
      { options: ['redirect_dir=nofollow'], reuseUpper: true, ops: [['readdir', '.'], ['stat', 'moved2'], ['readdir', 'moved2'], ['read', 'moved2/z'], ['rename', 'ld', 'ld2'], ['stat', 'moved']] },
    ],
  },
  {
    // index=off: each name of a lower hard link is copied up on its own; index=on keeps them one inode.
    name: 'index-off-and-on',
    lowers: [{ h1: { type: 'file', content: 'shared' }, h2: { type: 'hardlink', target: 'h1' }, 'sub/h3': { type: 'hardlink', target: 'h1' }, g1: { type: 'file', content: 'g' }, g2: { type: 'hardlink', target: 'g1' } }],
    rounds: [
      {
        options: ['index=off'],
        ops: [
          ['stat', 'h1'], ['sameIno', 'h1', 'h2'], ['writeViaOtherLink', 'h1', 'h2', 'changed'], ['read', 'sub/h3'], ['stat', 'h1'], ['stat', 'h2'],
          ['sameIno', 'h1', 'h2'], ['append', 'h2', '+'], ['read', 'h1'], ['read', 'h2'], ['link', 'h1', 'h4'], ['stat', 'h4'], ['sameIno', 'h1', 'h4'], ['unlink', 'sub/h3'], ['stat', 'h2'],
        ],
      },
      { options: ['index=on'], ops: [['read', 'h1'], ['read', 'h2'], ['writeViaOtherLink', 'g1', 'g2', 'G!'], ['stat', 'g2'], ['sameIno', 'g1', 'g2']] },
    ],
  },
  {
    // userxattr: the overlay's xattrs are user.overlay.*; the next round mounts that upper without the option,
    // where they are ordinary attributes, so their names and values are compared too.
    name: 'userxattr',
    lowers: [
      { 'md/top': { type: 'file', content: 't' } },
      { f: { type: 'file', content: 'f', xattrs: { 'user.a': '1' } }, 'd/x': { type: 'file', content: 'x' }, 'md/b': { type: 'file', content: 'b' }, 'ld/y': { type: 'file', content: 'y' } },
    ],
    rounds: [
      {
        options: ['userxattr'],
        ops: [
          ['unlink', 'f'], ['stat', 'f'], ['unlink', 'd/x'], ['rmdir', 'd'], ['mkdir', 'd'], ['readdir', 'd'], ['create', 'f', 'new'], ['listxattr', 'f'],
          ['rename', 'ld', 'ld2'], ['unlink', 'md/b'], ['readdir', 'md'], ['setxattr', 'md', 'user.overlay.mine', 'v'], ['getxattr', 'md', 'user.overlay.mine'],
          ['listxattr', 'md'], ['setxattr', 'md/top', 'trusted.overlay.t', 'tv'], ['listxattr', 'md/top'], ['chmod', 'ld/y', 0o600],
        ],
        afterRemount: [['readdir', 'd'], ['readdir', 'md'], ['listxattr', 'md'], ['stat', 'f'], ['read', 'f']],
      },
      {
        options: [], reuseUpper: true,
        ops: [['getxattr', 'd', 'user.overlay.opaque'], ['getxattr', 'md', 'user.overlay.overlay.mine'], ['getxattr', 'md/top', 'trusted.overlay.t'], ['readdir', 'd'], ['readdir', '.']],
      },
    ],
  },
  {
    // uuid=null: origins carry a null uuid; inode numbers still survive copy-up and remount on one filesystem.
    name: 'uuid-null',
    options: ['uuid=null'],
    lowers: [{ f: { type: 'file', content: 'x' }, 'd/g': { type: 'file', content: 'g' } }],
    rounds: [{
      ops: [['rememberIno', 'f', 'f0'], ['rememberIno', 'd', 'd0'], ['writeAt', 'f', 0, 'y'], ['sameIno', 'f0', 'f'], ['create', 'd/n', 'n'], ['sameIno', 'd0', 'd']],
      afterRemount: [['sameIno', 'f0', 'f'], ['sameIno', 'd0', 'd'], ['read', 'f']],
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
  const randomShapes: StackShape[] = [
    { name: `random-recycling-seed-${seed}`, ...randomRecycling(seed, 3, 150) },
    // The same kind of sequence with the lowers on a tmpfs under an ext4 upper (and the recycled uppers).
    { name: `random-recycling-tmpfs-lowers-seed-${seed}`, tmpfs: { lowers: true }, ...randomRecycling(seed + 1_000_003, 2, 150) },
  ];
  for (const shape of [...stackShapes, ...optionShapes, ...randomShapes]) {
    await t.test(shape.name, async (tt) => runShape(tt, shape));
  }
});
