#!/usr/bin/env node
/**
 * Per-request cost of the fuse-native binding: a JS passthrough serves getattr for N distinct names, a client
 * lstat()s each once with attr_timeout=0,entry_timeout=0 (so every lstat reaches the server), and the server's
 * own CPU time per request is reported. Used to measure the patch in scripts/fuse-native/ (see docs/native.md).
 *
 * Usage: node native/bench/request-cost.mjs [--fuse-native DIR] [--names N] [--rounds R] [--memory | --raw]
 * Works with upstream fuse-native too (it only uses getattr with plain stat objects).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    'fuse-native': { type: 'string' },
    names: { type: 'string', default: '20000' },
    rounds: { type: 'string', default: '3' },
    // Answer getattr from memory, so that the binding's own cost is what is measured.
    memory: { type: 'boolean', default: false },
    // Answer getattr with strata_sys.lstatRaw straight into the patched Uint32Array layout (patched binding only).
    raw: { type: 'boolean', default: false },
  },
});
const require = createRequire(import.meta.url);
const Fuse = require(values['fuse-native'] ? path.resolve(values['fuse-native']) : 'fuse-native');
const names = Number(values.names);
const rounds = Number(values.rounds);
const execFileAsync = promisify(execFile);

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'strata-request-cost-'));
const backing = path.join(work, 'backing');
const mnt = path.join(work, 'mnt');
fs.mkdirSync(backing);
fs.mkdirSync(mnt);
for (let i = 0; i < names; i++) fs.writeFileSync(path.join(backing, `f${i}`), '');

let requests = 0;
const fileStat = fs.lstatSync(path.join(backing, 'f0'));
const rootStat = fs.lstatSync(backing);
const sys = values.raw ? require('../build/Release/strata_sys.node') : null;
const raw = new Float64Array(16);
function rawStat(file) {
  const rc = sys.lstatRaw(file, raw);
  if (rc !== 0) return rc;
  const a = new Uint32Array(Fuse.STAT_LENGTH);
  const pair = (i, n) => { a[i] = n % 4294967296; a[i + 1] = Math.floor(n / 4294967296); };
  a[0] = raw[0]; a[1] = raw[1]; a[2] = raw[2]; pair(3, raw[3]); a[5] = raw[4]; a[6] = raw[5]; pair(7, raw[6]);
  a[9] = raw[7]; a[10] = raw[8]; pair(11, raw[9]);
  pair(13, raw[10]); a[15] = raw[11]; pair(16, raw[12]); a[18] = raw[13]; pair(19, raw[14]); a[21] = raw[15];
  return a;
}
const ops = {
  getattr(p, cb) {
    requests++;
    if (values.raw) {
      const st = rawStat(path.join(backing, p));
      return typeof st === 'number' ? cb(st) : cb(0, st);
    }
    if (values.memory) return cb(0, p === '/' ? rootStat : fileStat);
    fs.lstat(path.join(backing, p), (err, st) => (err ? cb(Fuse.ENOENT) : cb(0, st)));
  },
};
class BenchFuse extends Fuse {
  _fuseOptions() {
    const base = super._fuseOptions();
    const extra = 'attr_timeout=0,entry_timeout=0,negative_timeout=0';
    return base ? `${base},${extra}` : `-o${extra}`;
  }
}
const fuse = new BenchFuse(mnt, ops, { timeout: false });
await new Promise((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));

const client = `import os,sys
d=sys.argv[1]
for i in range(int(sys.argv[2])): os.lstat(d + "/f" + str(i))`;
try {
  for (let round = 0; round < rounds; round++) {
    requests = 0;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await execFileAsync('python3', ['-c', client, mnt, String(names)]);
    const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const cpuUs = cpu.user + cpu.system;
    console.log(JSON.stringify({
      round, names, requests,
      serverCpuUsPerRequest: +(cpuUs / requests).toFixed(1),
      wallUsPerLstat: +(wallUs / names).toFixed(1),
    }));
  }
} finally {
  await new Promise((resolve) => fuse.unmount(() => resolve()));
  fs.rmSync(work, { recursive: true, force: true });
}
