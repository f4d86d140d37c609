/**
 * Differential suite: kernel overlayfs (redirect_dir=on,index=on) is the oracle; the candidate
 * (STRATA_TEST_CANDIDATE, default strata) must give every op the same result and errno, and leave the same tree.
 *
 * All scenarios and the seeded random sequence live in one pair of mounts, each in its own dir, over two
 * freshly built identical copies of the lowers. Phases:
 *   1. live: per-op outcomes and the final tree;
 *   2. remount: the candidate is unmounted and mounted again on the same upper; more ops, tree again;
 *   3. kernel-over-candidate-upper: the kernel mounts the candidate's upper, with its workdir (index kept) and
 *      with a fresh one, and must show what it shows for its own upper mounted the same way;
 *   4. candidate-over-kernel-upper: the reverse, both ways.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { runOp, type Op, type OpContext } from '../helpers/ops.js';
import { prng, randomLayers, randomOps, seedFromEnv } from '../helpers/random.js';
import { candidateKind, candidateMissing, Sandbox, strataTransportName, type OverlayDirs, type OverlayKind } from '../helpers/sandbox.js';
import { buildLayer, diffTrees, snapshotTree, type LayerSpec, type TreeSnapshot } from '../helpers/tree.js';
import { scenarios, type Scenario } from './scenarios.js';

const candidate = candidateKind();
const seed = seedFromEnv();
const RANDOM_OPS = 400;
const MAX_DIVERGENCES_SHOWN = 12;

/**
 * Divergences strata is known to have, as `${phase}/${scenario}` -> reason. They are reported as tap todos
 * (still run, still printed) so CI stays green while they remain listed. Only applied to strata.
 */
const KNOWN_STRATA_DIVERGENCES: Record<string, string> = {
  'ops/nlink': 'fstat of an open lower file after unlink: the kernel reports nlink 1, strata 0',
  'ops/fallocate-collapse-insert': 'the FUSE kernel module answers EOPNOTSUPP to COLLAPSE_RANGE and INSERT_RANGE itself (fuse_file_fallocate)',
  ...Object.fromEntries(['live', 'remount', 'remount-after-ops', 'kernel-over-candidate-upper', 'kernel-over-candidate-upper-fresh-work']
    .map((phase) => [`${phase}/fallocate-collapse-insert`, 'follows from the refused COLLAPSE_RANGE/INSERT_RANGE'])),
  // The libfuse 2 binding has no fallocate and, by path, no way to reach a dir that was renamed over.
  ...(strataTransportName() === 'fuse-native' ? {
    'ops/fallocate-modes': 'fuse-native has no fallocate',
    'ops/fstat-dir-renamed-over': 'fuse-native: the removed dir has no path left',
    ...Object.fromEntries(['live', 'remount', 'remount-after-ops', 'kernel-over-candidate-upper', 'kernel-over-candidate-upper-fresh-work']
      .map((phase) => [`${phase}/fallocate-modes`, 'follows from fuse-native having no fallocate'])),
    // libfuse 2 cannot ask for FUSE_DONT_MASK: the kernel applies the umask before the request reaches us, so a
    // parent's default ACL cannot replace it (the default transport negotiates it).
    'ops/default-acl-replaces-umask': 'fuse-native gets modes the kernel already masked with the umask',
    ...Object.fromEntries(['live', 'remount', 'remount-after-ops', 'kernel-over-candidate-upper', 'kernel-over-candidate-upper-fresh-work']
      .map((phase) => [`${phase}/default-acl-replaces-umask`, 'follows from the umask applied before fuse-native sees the mode'])),
  } : {}),
};

function todoFor(phase: string, scenario: string): { todo?: string } {
  if (candidate !== 'strata') return {};
  const reason = KNOWN_STRATA_DIVERGENCES[`${phase}/${scenario}`];
  return reason ? { todo: reason } : {};
}

const randomRand = prng(seed);
const randomScenario: Scenario = {
  name: `random-seed-${seed}`,
  layers: randomLayers(randomRand),
  ops: randomOps(randomRand, RANDOM_OPS),
};
const allScenarios: Scenario[] = [...scenarios, randomScenario];

/** Lowers (top first) for one implementation: every scenario's layers under its own dir. */
function buildLowers(base: string): string[] {
  const lowers = [path.join(base, 'l0'), path.join(base, 'l1')];
  for (const [i, dir] of lowers.entries()) {
    const spec: LayerSpec = {};
    for (const s of allScenarios) {
      // The scenario dir itself exists in the bottom layer, so it is a merged dir when the top layer has entries.
      if (i === 1) spec[s.name] = { type: 'dir' };
      for (const [rel, entry] of Object.entries(s.layers[i]!)) {
        spec[`${s.name}/${rel}`] = entry.type === 'hardlink' ? { type: 'hardlink', target: `${s.name}/${entry.target}` } : entry;
      }
    }
    buildLayer(dir, spec);
  }
  return lowers;
}

interface Side {
  kind: OverlayKind;
  dirs: OverlayDirs;
  contexts: Map<string, OpContext>;
}

function contextFor(side: Side, scenario: Scenario): OpContext {
  let ctx = side.contexts.get(scenario.name);
  if (!ctx) {
    ctx = { root: '', inodes: new Map() };
    side.contexts.set(scenario.name, ctx);
  }
  ctx.root = path.join(side.dirs.mnt, scenario.name);
  return ctx;
}

/** Runs ops on both sides, interleaved, and returns one line per op whose outcomes differ. */
async function runBoth(kernel: Side, cand: Side, scenario: Scenario, ops: Op[], tally?: Map<string, number>): Promise<string[]> {
  const kctx = contextFor(kernel, scenario);
  const cctx = contextFor(cand, scenario);
  const divergences: string[] = [];
  for (const [i, op] of ops.entries()) {
    const expected = await runOp(kctx, op);
    const got = await runOp(cctx, op);
    const outcome = `${op[0]} ${expected.startsWith('ok') ? 'ok' : expected}`;
    tally?.set(outcome, (tally.get(outcome) ?? 0) + 1);
    if (expected !== got) divergences.push(`#${i} ${JSON.stringify(op)}: kernel ${expected}, ${cand.kind} ${got}`);
  }
  // After the first divergence of a long sequence the two states differ and everything cascades: keep the head.
  return divergences.length > MAX_DIVERGENCES_SHOWN ? [...divergences.slice(0, MAX_DIVERGENCES_SHOWN), `... ${divergences.length - MAX_DIVERGENCES_SHOWN} more`] : divergences;
}

function scenarioTrees(snapshot: TreeSnapshot): Map<string, TreeSnapshot> {
  const byScenario = new Map<string, TreeSnapshot>(allScenarios.map((s) => [s.name, {}]));
  for (const [rel, entry] of Object.entries(snapshot)) {
    const [top, ...rest] = rel.split('/');
    const tree = byScenario.get(top ?? '');
    if (tree) tree[rest.join('/')] = entry;
  }
  return byScenario;
}

function compareTrees(tt: Test, phase: string, expected: TreeSnapshot, actual: TreeSnapshot): void {
  const exp = scenarioTrees(expected);
  const act = scenarioTrees(actual);
  const rootDiffs = diffTrees(
    Object.fromEntries(Object.entries(expected).filter(([k]) => !k.includes('/'))),
    Object.fromEntries(Object.entries(actual).filter(([k]) => !k.includes('/'))),
  );
  tt.same(rootDiffs, [], `${phase}: mount root matches the kernel`);
  for (const s of allScenarios) {
    const diffs = diffTrees(exp.get(s.name) ?? {}, act.get(s.name) ?? {}, `${s.name}/`);
    tt.same(diffs, [], `${phase}: tree of ${s.name} matches the kernel${s === randomScenario ? ` (seed ${seed})` : ''}`, todoFor(phase, s.name));
  }
}



t.test(`differential: kernel overlayfs vs ${candidate}`, async (t) => {
  const missing = candidateMissing();
  if (missing) {
    t.fail(`candidate ${candidate} cannot run: ${missing}`);
    return;
  }
  t.comment(`random sequence seed ${seed} (replay with STRATA_TEST_SEED=${seed})`);
  const box = await Sandbox.create(t, 'diff');
  // Scenarios run some ops as other users (setpriv): they must be able to reach the mounts.
  fs.chmodSync(box.root, 0o711);
  const kernel: Side = {
    kind: 'kernel',
    dirs: { lowers: buildLowers(box.dir('k')), upper: box.dir('k/upper'), work: box.dir('k/work'), mnt: box.dir('k/mnt') },
    contexts: new Map(),
  };
  const cand: Side = {
    kind: candidate,
    dirs: { lowers: buildLowers(box.dir('c')), upper: box.dir('c/upper'), work: box.dir('c/work'), mnt: box.dir('c/mnt') },
    contexts: new Map(),
  };
  box.mount('kernel', kernel.dirs);
  box.mount(candidate, cand.dirs);

  t.same(diffTrees(snapshotTree(kernel.dirs.mnt), snapshotTree(cand.dirs.mnt)), [], 'the untouched merged trees are identical');

  for (const s of allScenarios) {
    await t.test(`live: ${s.name}`, async (tt) => {
      const tally = new Map<string, number>();
      const divergences = await runBoth(kernel, cand, s, s.ops, tally);
      if (s === randomScenario) {
        // Shows that the sequence exercises both successes and errors (on the kernel).
        tt.comment(`kernel outcomes: ${[...tally].sort().map(([k, n]) => `${k}×${n}`).join(', ')}`);
      }
      tt.same(divergences, [], `every op gives the kernel's result${s === randomScenario ? ` (seed ${seed})` : ''}`, todoFor('ops', s.name));
    });
  }
  const kernelTree = snapshotTree(kernel.dirs.mnt);
  await t.test('live: final trees', async (tt) => compareTrees(tt, 'live', kernelTree, snapshotTree(cand.dirs.mnt)));

  box.unmount(cand.dirs.mnt);
  box.mount(candidate, cand.dirs);
  await t.test('remount: trees', async (tt) => compareTrees(tt, 'remount', kernelTree, snapshotTree(cand.dirs.mnt)));
  for (const s of allScenarios.filter((sc) => sc.afterRemount)) {
    await t.test(`remount: ${s.name}`, async (tt) => {
      const divergences = await runBoth(kernel, cand, s, s.afterRemount ?? []);
      tt.same(divergences, [], 'every op after the remount gives the kernel\'s result', todoFor('remount-ops', s.name));
    });
  }
  const kernelFinal = snapshotTree(kernel.dirs.mnt);
  await t.test('remount: trees after more ops', async (tt) => compareTrees(tt, 'remount-after-ops', kernelFinal, snapshotTree(cand.dirs.mnt)));
  box.unmount(cand.dirs.mnt);
  box.unmount(kernel.dirs.mnt);

  // The index of lower hard links lives in workdir/index, so a fresh workdir legitimately loses it. The oracle for
  // "fresh workdir" is the kernel mounting its own upper with a fresh workdir; with the original workdir it is the
  // kernel's final tree.
  const snapshotOf = (kind: OverlayKind, dirs: OverlayDirs): TreeSnapshot => {
    box.mount(kind, dirs);
    try {
      return snapshotTree(dirs.mnt);
    } finally {
      box.unmount(dirs.mnt);
    }
  };
  const kernelFreshWork = snapshotOf('kernel', { ...kernel.dirs, work: box.dir('k/work-fresh-kernel'), mnt: box.dir('k/mnt-fresh-kernel') });

  await t.test('kernel overlayfs mounts the candidate\'s upper and workdir', async (tt) => {
    compareTrees(tt, 'kernel-over-candidate-upper', kernelFinal, snapshotOf('kernel', { ...cand.dirs, mnt: box.dir('c/mnt-kernel') }));
  });
  await t.test('kernel overlayfs mounts the candidate\'s upper with a fresh workdir', async (tt) => {
    compareTrees(tt, 'kernel-over-candidate-upper-fresh-work', kernelFreshWork,
      snapshotOf('kernel', { ...cand.dirs, work: box.dir('c/work-fresh-kernel'), mnt: box.dir('c/mnt-fresh-kernel') }));
  });
  await t.test(`${candidate} mounts the kernel's upper and workdir`, async (tt) => {
    compareTrees(tt, 'candidate-over-kernel-upper', kernelFinal, snapshotOf(candidate, { ...kernel.dirs, mnt: box.dir('k/mnt-candidate') }));
  });
  await t.test(`${candidate} mounts the kernel's upper with a fresh workdir`, async (tt) => {
    compareTrees(tt, 'candidate-over-kernel-upper-fresh-work', kernelFreshWork,
      snapshotOf(candidate, { ...kernel.dirs, work: box.dir('k/work-fresh-candidate'), mnt: box.dir('k/mnt-fresh-candidate') }));
  });
});
