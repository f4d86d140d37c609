#!/usr/bin/env node
/**
 * One worker of the concurrent metadata stress (issue 13): a seeded sequence of random filesystem operations
 * in one shared tree. The benchmark starts several workers at once on the same tree, so their operations race
 * (a name another worker just removed, a file that became a directory): those answers are ordinary errnos and
 * are counted, not failures. An errno outside EXPECTED_ERRNOS (EIO, ENOTCONN, ESTALE...) means the filesystem
 * broke, and the worker exits 1.
 *
 *   node dist/scripts/bench/stress.js --dir MOUNT/stress --seed 1 --worker 0 --ops 2500
 *
 * Prints one JSON line: { worker, ops, ok, errors: { ENOENT: n, ... }, byOp: { create: n, ... } }.
 * The tree: dirs d0..d{DIRS-1} (some from the lower), each holding names n0..n{NAMES-1} that the operations
 * create, replace and remove as files, dirs, hard links and symlinks.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const DIRS = 8;
export const NAMES = 16;

/** Answers a racing worker can legitimately get (EXDEV: fuse-overlayfs refuses to rename lower dirs). */
export const EXPECTED_ERRNOS = new Set(['ENOENT', 'EEXIST', 'ENOTEMPTY', 'ENOTDIR', 'EISDIR', 'EINVAL', 'EXDEV', 'EMLINK', 'ELOOP', 'EPERM']);

type OpName =
  | 'create' | 'mkdir' | 'rename' | 'link' | 'unlink' | 'write' | 'odirect-write' | 'truncate' | 'fsync' | 'fdatasync' | 'sync'
  | 'chown' | 'symlink' | 'getdents' | 'stat';

/** Relative weights: metadata reads dominate, as in real workloads; sync(2) is rare (it flushes the machine). */
const WEIGHTS: ReadonlyArray<readonly [OpName, number]> = [
  ['stat', 15], ['getdents', 8], ['create', 10], ['write', 10], ['unlink', 10], ['rename', 8], ['mkdir', 5], ['link', 5],
  ['symlink', 5], ['chown', 5], ['truncate', 5], ['odirect-write', 4], ['fsync', 3], ['fdatasync', 3], ['sync', 1],
];
const TOTAL_WEIGHT = WEIGHTS.reduce((sum, [, w]) => sum + w, 0);

/** xorshift32: the same seed gives the same operation sequence on every implementation. */
function prng(seed: number): () => number {
  let state = (seed >>> 0) || 0x9e3779b9;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x100000000;
  };
}

/** An O_DIRECT write needs a block-aligned buffer; WebAssembly memory is page-aligned, a Buffer is not. */
const wasm = (globalThis as unknown as { WebAssembly: { Memory: new (d: { initial: number }) => { buffer: ArrayBuffer } } }).WebAssembly;
const direct = Buffer.from(new wasm.Memory({ initial: 1 }).buffer, 0, 4096).fill(0x61);

export interface StressReport {
  worker: number;
  ops: number;
  ok: number;
  errors: Record<string, number>;
  byOp: Record<string, number>;
}

export function runWorker(root: string, seed: number, worker: number, ops: number): StressReport {
  const rand = prng(seed * 7919 + worker * 104729 + 1);
  const pick = (n: number) => Math.floor(rand() * n);
  const name = () => path.join(root, `d${pick(DIRS)}`, `n${pick(NAMES)}`);
  const payload = Buffer.alloc(16 * 1024, 0x30 + worker);
  const report: StressReport = { worker, ops, ok: 0, errors: {}, byOp: {} };
  const withFd = (p: string, flags: number, fn: (fd: number) => void) => {
    const fd = fs.openSync(p, flags, 0o644);
    try {
      fn(fd);
    } finally {
      fs.closeSync(fd);
    }
  };
  const { O_WRONLY, O_CREAT, O_RDWR, O_DIRECT } = fs.constants;
  for (let i = 0; i < ops; i++) {
    let roll = pick(TOTAL_WEIGHT);
    let op: OpName = 'stat';
    for (const [candidate, weight] of WEIGHTS) {
      if (roll < weight) {
        op = candidate;
        break;
      }
      roll -= weight;
    }
    report.byOp[op] = (report.byOp[op] ?? 0) + 1;
    try {
      switch (op) {
        case 'create':
          fs.writeFileSync(name(), payload.subarray(0, pick(4096)));
          break;
        case 'mkdir':
          fs.mkdirSync(name());
          break;
        case 'rename':
          fs.renameSync(name(), name());
          break;
        case 'link':
          fs.linkSync(name(), name());
          break;
        case 'unlink': {
          const p = name();
          if (pick(4) === 0) fs.rmdirSync(p);
          else fs.unlinkSync(p);
          break;
        }
        case 'write':
          withFd(name(), O_WRONLY | O_CREAT, (fd) => fs.writeSync(fd, payload, 0, 1 + pick(payload.length), pick(64 * 1024)));
          break;
        case 'odirect-write':
          withFd(name(), O_WRONLY | O_CREAT | O_DIRECT, (fd) => fs.writeSync(fd, direct, 0, direct.length, pick(16) * 4096));
          break;
        case 'truncate':
          fs.truncateSync(name(), pick(32 * 1024));
          break;
        case 'fsync':
        case 'fdatasync':
          withFd(name(), O_RDWR, (fd) => {
            fs.writeSync(fd, payload, 0, 512, 0);
            if (op === 'fsync') fs.fsyncSync(fd);
            else fs.fdatasyncSync(fd);
          });
          break;
        case 'sync': {
          // Node has no sync(2): coreutils' sync makes it. A FUSE mount's syncfs never reaches its server, so
          // sync(2) of the whole machine is the one flush that costs every implementation the same.
          const r = spawnSync('sync', [], { stdio: 'ignore' });
          if (r.status !== 0) throw Object.assign(new Error(`sync exited ${r.status ?? r.signal}`), { code: 'EIO' });
          break;
        }
        case 'chown':
          fs.lchownSync(name(), pick(3) * 1000, pick(3) * 1000);
          break;
        case 'symlink':
          fs.symlinkSync(`n${pick(NAMES)}`, name());
          break;
        case 'getdents':
          fs.readdirSync(path.join(root, `d${pick(DIRS)}`), { withFileTypes: true });
          break;
        case 'stat':
          fs.lstatSync(name());
          break;
      }
      report.ok++;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'UNKNOWN';
      report.errors[code] = (report.errors[code] ?? 0) + 1;
      if (!EXPECTED_ERRNOS.has(code)) {
        process.stderr.write(`stress worker ${worker}: op ${i} (${op}) failed with ${code}: ${(err as Error).message}\n`);
      }
    }
  }
  return report;
}

/** The seeded lower part of the stress tree: half the dirs exist below, with a few files and dirs in them. */
export function buildStressLower(root: string): void {
  for (let d = 0; d < DIRS; d += 2) {
    const dir = path.join(root, `d${d}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let n = 0; n < NAMES; n += 2) {
      if (n % 6 === 0) fs.mkdirSync(path.join(dir, `n${n}`));
      else fs.writeFileSync(path.join(dir, `n${n}`), Buffer.alloc(1024 * (n + 1), 0x41 + d));
    }
  }
}

function main(argv: string[]): number {
  const get = (flag: string): string => {
    const i = argv.indexOf(flag);
    const value = i < 0 ? undefined : argv[i + 1];
    if (value === undefined) throw new Error(`missing ${flag}`);
    return value;
  };
  const root = get('--dir');
  const seed = Number(get('--seed'));
  const worker = Number(get('--worker'));
  const ops = Number(get('--ops'));
  for (let d = 0; d < DIRS; d++) fs.mkdirSync(path.join(root, `d${d}`), { recursive: true });
  const report = runWorker(root, seed, worker, ops);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  return Object.keys(report.errors).every((code) => EXPECTED_ERRNOS.has(code)) ? 0 : 1;
}

if (process.argv[1] && import.meta.url.endsWith(path.basename(process.argv[1]))) process.exitCode = main(process.argv.slice(2));
