/**
 * Seeded random lower trees and op sequences for the differential suite. Everything is a pure function of the
 * seed, so the kernel and the candidate see identical inputs and a failure is replayed with STRATA_TEST_SEED.
 */
import type { Op } from './ops.js';
import type { LayerSpec } from './tree.js';

/** mulberry32: tiny, well-known, good enough to pick test inputs. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * STRATA_TEST_SEED: an integer replays that sequence; 'random' draws a new seed (printed by the suite) to explore.
 * The default is a fixed seed, so CI results do not depend on luck.
 */
export const DEFAULT_SEED = 1;

export function seedFromEnv(): number {
  const fromEnv = process.env.STRATA_TEST_SEED;
  if (fromEnv === undefined || fromEnv === '') return DEFAULT_SEED;
  if (fromEnv === 'random') return Math.floor(Math.random() * 2 ** 31);
  const n = Number(fromEnv);
  if (!Number.isInteger(n)) throw new Error(`STRATA_TEST_SEED must be an integer or "random", not "${fromEnv}"`);
  return n;
}

const NAMES = ['a', 'b', 'c', 'd'];
/** The small pool every random path comes from: depth 1 and 2, so renames and rmdirs collide often. */
export const PATH_POOL: string[] = [...NAMES, ...NAMES.flatMap((n) => NAMES.map((m) => `${n}/${m}`))];

/**
 * Long paths (issue 12 §3): names of 250 bytes, DEEP_LEVELS of them make a relative path just under PATH_MAX. The
 * generator builds chains of them (in steps of at most DEEP_LEVELS, each step a relative mkdir from the deepest
 * dir so far) and runs ordinary ops from inside, so real paths reach twice PATH_MAX below the layer roots.
 */
export const LONG_NAME = 'L'.repeat(250);
export const DEEP_LEVELS = 15;
export const longChain = (n: number): string => Array.from({ length: n }, () => LONG_NAME).join('/');
/** The deepest dir below a top-level name: two chains of DEEP_LEVELS, about 7.5 KB. */
export const deepDirOf = (name: string): string => `${name}/${longChain(DEEP_LEVELS)}/${longChain(DEEP_LEVELS)}`;

/** Two random lower layers (top first) over the pool, including whiteouts and an opaque dir in the top one. */
export function randomLayers(rand: () => number): [LayerSpec, LayerSpec] {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  // A whiteout only means something over a merged dir: the kernel lists whiteouts inside a dir that has
  // nothing beneath it (it reads such a dir directly), so those are only generated where the bottom has a dir.
  const layer = (isTop: boolean, below: LayerSpec = {}): LayerSpec => {
    const spec: LayerSpec = {};
    for (const name of NAMES) {
      const kind = pick(isTop ? ['none', 'none', 'file', 'dir', 'dir', 'symlink', 'whiteout', 'opaque'] : ['none', 'file', 'dir', 'dir', 'dir', 'symlink']);
      if (kind === 'none') continue;
      if (kind === 'file') spec[name] = { type: 'file', content: `${isTop ? 'top' : 'bottom'} ${name} ${Math.floor(rand() * 1000)}`, mode: pick([0o644, 0o600, 0o755]) };
      else if (kind === 'symlink') spec[name] = { type: 'symlink', target: pick(NAMES) };
      else if (kind === 'whiteout') spec[name] = { type: 'whiteout' };
      else {
        spec[name] = { type: 'dir', opaque: kind === 'opaque', mode: pick([0o755, 0o700]) };
        for (const child of NAMES) {
          const merged = isTop && kind === 'dir' && below[name]?.type === 'dir';
          const c = pick(['none', 'none', 'file', 'dir', ...(merged ? ['whiteout'] : [])]);
          if (c === 'file') spec[`${name}/${child}`] = { type: 'file', content: `${name}/${child} ${Math.floor(rand() * 1000)}`, xattrs: rand() < 0.3 ? { 'user.r': 'v' } : undefined };
          else if (c === 'dir') spec[`${name}/${child}`] = { type: 'dir' };
          else if (c === 'whiteout') spec[`${name}/${child}`] = { type: 'whiteout' };
        }
      }
    }
    return spec;
  };
  const bottom = layer(false);
  // Lower hard links: copy-up of one name must keep the others sharing its data (index=on).
  const files = Object.keys(bottom).filter((k) => bottom[k]?.type === 'file');
  const free = PATH_POOL.filter((p) => !(p in bottom) && (!p.includes('/') || bottom[p.split('/')[0]!]?.type === 'dir'));
  for (let i = 0; i < 2 && files.length && free.length; i++) {
    const at = free.splice(Math.floor(rand() * free.length), 1)[0]!;
    bottom[at] = { type: 'hardlink', target: pick(files) };
  }
  // Deep lower dirs (longer than PATH_MAX below the layer root), where the ops' deep chains run into them.
  for (const name of NAMES) {
    if (bottom[name]?.type !== 'dir' || rand() < 0.5) continue;
    const deep = deepDirOf(name);
    bottom[`${deep}/a`] = { type: 'file', content: `deep ${name} ${Math.floor(rand() * 1000)}`, xattrs: rand() < 0.5 ? { 'user.r': 'deep' } : undefined };
    bottom[`${deep}/b`] = { type: 'dir' };
    bottom[`${deep}/b/c`] = { type: 'file', content: 'deep c' };
  }
  return [layer(true, bottom), bottom];
}

/** `count` random ops over the pool. Ops that could block (reading fifos) are never generated. */
export function randomOps(rand: () => number, count: number): Op[] {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const p = () => pick(PATH_POOL);
  const text = () => `w${Math.floor(rand() * 100000)}`;
  const makers: (() => Op)[] = [
    () => ['create', p(), text()],
    () => ['create', p(), text()],
    () => ['write', p(), text()],
    () => ['append', p(), text()],
    () => ['writeAt', p(), Math.floor(rand() * 8), text()],
    () => ['truncate', p(), Math.floor(rand() * 6)],
    () => ['unlink', p()],
    () => ['unlink', p()],
    () => ['mkdir', p()],
    () => ['mkdir', p()],
    // Top-level dirs keep depth-2 paths reachable: without them most ops end in ENOTDIR.
    () => ['mkdir', pick(NAMES)],
    () => ['mkdir', pick(NAMES)],
    () => ['rename', pick(NAMES), p()],
    () => ['rmdir', p()],
    () => ['rename', p(), p()],
    () => ['rename', p(), p()],
    () => ['rename', p(), p()],
    () => ['link', p(), p()],
    () => ['symlink', pick(NAMES), p()],
    () => ['chmod', p(), pick([0o600, 0o640, 0o755, 0o700])],
    () => ['chown', p(), pick([0, 1, 1000]), pick([0, 2, 1000])],
    () => ['setMtime', p(), '1100000000.000000321'],
    () => ['setxattr', p(), pick(['user.k', 'user.j', 'trusted.k']), text()],
    () => ['removexattr', p(), pick(['user.k', 'user.r'])],
    () => ['read', p()],
    () => ['stat', p()],
    () => ['readdir', pick(['.', ...NAMES])],
    () => ['readlink', p()],
  ];
  // The long-path shapes: build a deep chain under a top-level name, act from inside it, move things between
  // depths, and move whole chains. A chain is built by DEEP_LEVELS relative mkdirs from the name, then as many
  // from the middle of the chain (each path under PATH_MAX; the ones below a missing dir fail on both sides).
  const deepMakers: (() => Op | Op[])[] = [
    () => {
      const name = pick(NAMES);
      const steps = (from: string): Op[] => Array.from({ length: DEEP_LEVELS }, (_, i): Op => ['at', from, ['mkdir', longChain(i + 1)]]);
      return [...steps(name), ...steps(`${name}/${longChain(DEEP_LEVELS)}`)];
    },
    () => ['at', deepDirOf(pick(NAMES)), pick(makers)()],
    () => ['at', deepDirOf(pick(NAMES)), pick(makers)()],
    () => ['at', deepDirOf(pick(NAMES)), pick(makers)()],
    () => ['at', `${pick(NAMES)}/${longChain(DEEP_LEVELS)}`, ['rename', `${longChain(DEEP_LEVELS)}/${p()}`, p()]],
    () => ['at', deepDirOf(pick(NAMES)), ['rename', p(), `${'../'.repeat(DEEP_LEVELS)}${p()}`]],
    () => ['rename', `${pick(NAMES)}/${LONG_NAME}`, `${pick(NAMES)}/${LONG_NAME}`],
  ];
  const ops: Op[] = [];
  while (ops.length < count) {
    // About one op in eight is a long-path shape.
    const made = rand() < 0.125 ? pick(deepMakers)() : pick(makers)();
    if (Array.isArray(made[0])) ops.push(...(made as Op[]));
    else ops.push(made as Op);
  }
  return ops.slice(0, count);
}

/**
 * A recycled layer stack: two random lowers, then `rounds` rounds of random ops. Each round mounts a fresh
 * upper over the uppers of all earlier rounds (newest on top) and the two lowers, the way layer stores stack
 * an old upper as a lower, so redirects, whiteouts, opaque dirs and origins are read back from lower layers.
 */
export function randomRecycling(seed: number, rounds: number, opsPerRound: number): { lowers: LayerSpec[]; rounds: { ops: Op[] }[] } {
  const rand = prng(seed);
  return {
    lowers: randomLayers(rand),
    rounds: Array.from({ length: rounds }, () => ({ ops: randomOps(rand, opsPerRound) })),
  };
}
