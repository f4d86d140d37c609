/**
 * The metadata workloads of issue 13: a concurrent metadata stress, `stat` of every file twice (the second pass
 * served by the kernel's caches), `git status` in a checkout on the mount, and the time to mount a 50-layer
 * chain. Like the core workloads, each checks that the work was really done.
 *
 * Their extra inputs (the stress tree's lower part, the git checkout, the layer chain) are built once under the
 * cache dir by `setup`, in a staging dir renamed into place, and reused by later runs.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../../lib/log.js';
import { fixtureKey, isProcessAlive } from './fixture.js';
import { shellQuote as q } from './shell.js';
import { buildStressLower, EXPECTED_ERRNOS, type StressReport } from './stress.js';
import { expectNumber, fail, type SetupContext, type WarmContext, type Workload, type WorkloadContext } from './workloads.js';

const STRESS_SCRIPT = fileURLToPath(new URL('./stress.js', import.meta.url));
/** One seed for every run and implementation: each worker's operation sequence is the same everywhere. */
const STRESS_SEED = 1;

/** Builds `dir` once: in `<dir>.staging-<pid>`, renamed into place; stagings of dead builders are removed first. */
async function buildOnce(dir: string, log: Logger, build: (staging: string) => Promise<void> | void): Promise<void> {
  if (existsSync(join(dir, '.complete'))) return;
  const parent = join(dir, '..');
  mkdirSync(parent, { recursive: true });
  const base = dir.slice(parent.length + 1);
  for (const name of readdirSync(parent)) {
    const match = /\.staging-(\d+)$/.exec(name);
    if (match && name.startsWith(`${base}.staging-`) && !isProcessAlive(Number(match[1]))) rmSync(join(parent, name), { recursive: true, force: true });
  }
  const staging = `${dir}.staging-${process.pid}`;
  rmSync(staging, { recursive: true, force: true });
  log.info({ dir }, 'building a workload input (once; reused by later runs)');
  try {
    mkdirSync(staging, { recursive: true });
    await build(staging);
    writeFileSync(join(staging, '.complete'), '');
    rmSync(dir, { recursive: true, force: true }); // an incomplete one from an older layout
    renameSync(staging, dir);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

const stressDir = (cacheDir: string) => join(cacheDir, 'stress-lower-v1');
const gitDir = (ctx: { cacheDir: string; fixture: WarmContext['fixture']; sizes: WarmContext['sizes'] }) =>
  join(ctx.cacheDir, `git-${fixtureKey(ctx.fixture.manifest.spec)}-${ctx.sizes.gitFiles}`);
const chainDir = (ctx: { cacheDir: string; sizes: WarmContext['sizes'] }) => join(ctx.cacheDir, `chain-${ctx.sizes.chainLayers}`);
/** Short layer names: 50 lowerdirs must fit in the one page of mount(2) options the kernel accepts. */
const layerName = (i: number) => String(i).padStart(2, '0');

const CHAIN_FILES = 100;

function statPass(ctx: WorkloadContext) {
  return ctx.runner.bash(`xargs -0 stat --printf=. < ${q(ctx.fixture.readList)} | wc -c`, { cwd: join(ctx.mountpoint, 'tree') });
}

const warmTreeMetadata = async ({ fixture, runner }: WarmContext) => {
  await runner.bash(`find ${q(join(fixture.lowerdir, 'tree'))} -ls > /dev/null`);
};

export const METADATA_WORKLOADS: readonly Workload[] = [
  {
    name: 'metadata-stress',
    cache: 'none',
    metric: 'seconds',
    describe: (_f, s) =>
      `${s.stressProcesses} processes x ${s.stressOps} seeded random ops (create, mkdir, rename, link, unlink, write, O_DIRECT write, truncate, fsync, fdatasync, sync, chown, symlink, getdents, stat) in one tree`,
    setup: ({ cacheDir, log }) => buildOnce(stressDir(cacheDir), log, (staging) => buildStressLower(join(staging, 'stress'))),
    lowerdirs: ({ cacheDir }) => [stressDir(cacheDir)],
    run: ({ mountpoint, sizes, runner }) => {
      const workers = Array.from({ length: sizes.stressProcesses }, (_, i) =>
        `${q(process.execPath)} ${q(STRESS_SCRIPT)} --dir ${q(join(mountpoint, 'stress'))} --seed ${STRESS_SEED} --worker ${i} --ops ${sizes.stressOps} & pids+=($!)`,
      );
      // Every worker's status counts: a bare `wait` would hide a worker that broke.
      return runner.bash(`pids=(); ${workers.join('; ')}; rc=0; for p in "\${pids[@]}"; do wait "$p" || rc=1; done; exit $rc`);
    },
    check: ({ mountpoint, sizes }, result) => {
      const reports = result.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as StressReport);
      expectNumber('metadata-stress', 'workers that reported', reports.length, sizes.stressProcesses);
      expectNumber('metadata-stress', 'operations done', reports.reduce((n, r) => n + r.ok + Object.values(r.errors).reduce((a, b) => a + b, 0), 0), sizes.stressOps * sizes.stressProcesses);
      const unexpected = reports.flatMap((r) => Object.keys(r.errors).filter((code) => !EXPECTED_ERRNOS.has(code)));
      if (unexpected.length) fail('metadata-stress', `unexpected errors: ${[...new Set(unexpected)].join(', ')}`);
      // The tree the workers left must still be walkable: every listed name stats.
      const walk = spawnSync('find', [join(mountpoint, 'stress'), '-ls'], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
      if (walk.status !== 0) fail('metadata-stress', `find -ls of the tree afterwards failed: ${walk.stderr.trim().split('\n')[0]}`);
    },
  },
  {
    name: 'stat-pass1',
    cache: 'warm',
    metric: 'seconds',
    describe: (f) => `stat of every file (${f.manifest.treeRegularFiles}) on a fresh mount: xargs stat < list`,
    warm: warmTreeMetadata,
    run: statPass,
    check: ({ fixture }, result) => expectNumber('stat-pass1', 'files stat-ed', Number(result.stdout.trim()), fixture.manifest.treeRegularFiles),
  },
  {
    name: 'stat-pass2',
    cache: 'warm',
    metric: 'seconds',
    describe: (f) => `the same stat of every file (${f.manifest.treeRegularFiles}) again, after an untimed first pass (kernel caches)`,
    warm: warmTreeMetadata,
    prepare: async (ctx) => {
      await statPass(ctx);
    },
    run: statPass,
    check: ({ fixture }, result) => expectNumber('stat-pass2', 'files stat-ed', Number(result.stdout.trim()), fixture.manifest.treeRegularFiles),
  },
  {
    name: 'git-status',
    cache: 'warm',
    metric: 'seconds',
    describe: (_f, s) => `git status in a committed checkout of ${s.gitFiles} files (a fresh mount: git refreshes its index)`,
    setup: (ctx: SetupContext) =>
      buildOnce(gitDir(ctx), ctx.log, async (staging) => {
        const repo = join(staging, 'lower', 'repo');
        mkdirSync(repo, { recursive: true });
        const files = readFileSync(ctx.fixture.readList, 'utf8').split('\0').filter(Boolean).slice(0, ctx.sizes.gitFiles);
        writeFileSync(join(staging, 'list'), files.map((f) => `${f}\0`).join(''));
        await ctx.runner.bash(`tar -C ${q(join(ctx.fixture.lowerdir, 'tree'))} --null --no-recursion -T ${q(join(staging, 'list'))} -cf - | tar -C ${q(repo)} -xf -`);
        rmSync(join(staging, 'list'));
        const git = `git -C ${q(repo)} -c user.name=bench -c user.email=bench@localhost -c init.defaultBranch=main`;
        await ctx.runner.bash(`${git} init -q && ${git} add -A && ${git} commit -q -m fixture && ${git} gc -q`);
      }),
    lowerdirs: (ctx) => [join(gitDir(ctx), 'lower')],
    warm: async (ctx) => {
      await ctx.runner.bash(`tar -C ${q(join(gitDir(ctx), 'lower'))} -cf - repo | cat > /dev/null`);
    },
    run: ({ mountpoint, runner }) => runner.bash(`git -c safe.directory='*' -C ${q(join(mountpoint, 'repo'))} status --porcelain | wc -l`),
    check: (_ctx, result) => expectNumber('git-status', 'changed files git reports', Number(result.stdout.trim()), 0),
  },
  {
    name: 'mount-chain',
    cache: 'warm',
    metric: 'seconds',
    describe: (_f, s) => `mount of a ${s.chainLayers}-layer chain (${CHAIN_FILES * 2} files per layer, a dir merged across all), until live`,
    setup: (ctx) =>
      buildOnce(chainDir(ctx), ctx.log, (staging) => {
        for (let layer = 0; layer < ctx.sizes.chainLayers; layer++) {
          const root = join(staging, layerName(layer));
          mkdirSync(join(root, 'common'), { recursive: true });
          mkdirSync(join(root, `only${layerName(layer)}`));
          for (let i = 0; i < CHAIN_FILES; i++) {
            writeFileSync(join(root, 'common', `l${layerName(layer)}-${i}`), '');
            writeFileSync(join(root, `only${layerName(layer)}`, `f${i}`), layerName(layer));
          }
          writeFileSync(join(root, 'common', 'shared'), layerName(layer));
        }
      }),
    // The top layer is 00, as in lowerdir= order.
    lowerdirs: (ctx) => Array.from({ length: ctx.sizes.chainLayers }, (_, i) => join(chainDir(ctx), layerName(i))),
    warm: async (ctx) => {
      await ctx.runner.bash(`find ${q(chainDir(ctx))} -ls > /dev/null`);
    },
    check: ({ mountpoint, sizes }) => {
      expectNumber('mount-chain', 'names in the merged dir', readdirSync(join(mountpoint, 'common')).length, sizes.chainLayers * CHAIN_FILES + 1);
      expectNumber('mount-chain', 'top-level dirs', readdirSync(mountpoint).length, sizes.chainLayers + 1);
      if (readFileSync(join(mountpoint, 'common', 'shared'), 'utf8') !== '00') fail('mount-chain', 'the top layer does not win in the merged dir');
      const bottom = layerName(sizes.chainLayers - 1);
      if (readFileSync(join(mountpoint, `only${bottom}`, 'f0'), 'utf8') !== bottom) fail('mount-chain', 'the bottom layer is not visible');
    },
  },
];
