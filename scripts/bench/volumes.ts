#!/usr/bin/env node
/**
 * The volume benchmark (issue 8): sequential write and read of a big file, and an untar of many small files, into
 * a named volume through a union mount, next to the same work in the mount's upper (through FUSE) and in a plain
 * dir of the host filesystem (the reference). It runs a real stratad on a scratch state dir and drives it with
 * the real CLI, as a user would, so the volume is attached exactly as `strata mount create --volume` attaches it.
 *
 *   node dist/scripts/bench/volumes.js [--mib 1024] [--files 20000] [--runs 3] [--dir /var/tmp] [--quick]
 *
 * Cache state: writes start with nothing cached (fresh files); reads are cold (sync + drop_caches right before);
 * the untar reads its tar from the page cache (read once just before). Each place gets a fresh dir per run, the
 * order of the places rotates from round to round, and
 * every result is checked (sizes, file counts, where the bytes landed). Prints medians (min-max) and the ratios
 * to the host dir; exits 0 when every cell ran. Everything it made is removed at exit, also on errors and Ctrl-C.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { StrataError } from '../../lib/errors.js';

const distDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const stratad = path.join(distDir, 'daemon/stratad.js');
const strataCli = path.join(distDir, 'lib/cli/strata.js');
const MiB = 1024 * 1024;

type Place = 'host' | 'volume' | 'upper';
const PLACES: Place[] = ['host', 'volume', 'upper'];
type WorkloadName = 'seq-write' | 'seq-read' | 'untar-small';
const WORKLOADS: WorkloadName[] = ['seq-write', 'seq-read', 'untar-small'];

function fail(message: string): never {
  throw new StrataError('STRATA_BENCH_FAILED', message);
}

/** Runs a command to completion, timing it; a non-zero exit is a failed cell. */
function timed(file: string, args: string[]): number {
  const start = process.hrtime.bigint();
  const r = spawnSync(file, args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.status !== 0) fail(`${file} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr ?? '').trim().split('\n')[0]}`);
  return seconds;
}

function sh(script: string): string {
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) fail(`${script} failed: ${(r.stderr ?? '').trim()}`);
  return r.stdout;
}

function dropCaches(): void {
  sh('sync; echo 3 > /proc/sys/vm/drop_caches');
}

function countFiles(dir: string): number {
  return readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile()).length;
}

/** small.tar: `files` files of 100 B - 8 KiB, 100 per dir (the core benchmark's untar-small shape). */
function makeSmallTar(scratch: string, files: number): string {
  const src = path.join(scratch, 'small-src');
  for (let i = 0; i < files; i++) {
    const dir = path.join(src, 'small', `d${Math.floor(i / 100)}`);
    if (i % 100 === 0) mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, `f${i}.txt`), Buffer.alloc(100 + ((i * 7919) % 8092), 97 + (i % 26)));
  }
  const tar = path.join(scratch, 'small.tar');
  timed('tar', ['-C', src, '-cf', tar, 'small']);
  rmSync(src, { recursive: true, force: true });
  return tar;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .scriptName('strata-bench-volumes')
    .option('quick', { type: 'boolean', default: false, describe: 'small sizes, one run (a smoke run)' })
    .option('mib', { type: 'number', describe: 'size of the sequential file in MiB (default 1024; --quick 64)' })
    .option('files', { type: 'number', describe: 'files in the untar (default 20000; --quick 2000)' })
    .option('runs', { type: 'number', describe: 'runs per cell, the median is reported (default 3; --quick 1)' })
    .option('dir', { type: 'string', default: '/var/tmp', describe: 'where the scratch dir is made (on the filesystem to compare with)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the results as JSON too' })
    .strict()
    .parseAsync();
  const mib = args.mib ?? (args.quick ? 64 : 1024);
  const files = args.files ?? (args.quick ? 2000 : 20000);
  const runs = args.runs ?? (args.quick ? 1 : 3);
  for (const [name, value] of [['mib', mib], ['files', files], ['runs', runs]] as const) {
    if (!Number.isInteger(value) || value < 1) throw new StrataError('STRATA_BAD_OPTION', `--${name} must be a positive whole number, got ${value}`);
  }

  const scratch = mkdtempSync(path.join(path.resolve(args.dir), 'strata-bench-volumes-'));
  const root = path.join(scratch, 'root');
  const socket = path.join(scratch, 'strata.sock');
  const target = path.join(scratch, 'mnt');
  const host = path.join(scratch, 'host');
  const lower = path.join(scratch, 'lower');
  for (const dir of [target, host, lower]) mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(lower, 'README'), 'the volume benchmark lower\n');
  let daemon: ChildProcess | undefined;
  const cli = (...argv: string[]) => {
    const r = spawnSync(process.execPath, [strataCli, '--socket', socket, ...argv], { encoding: 'utf8' });
    if (r.status !== 0) fail(`strata ${argv.join(' ')}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  const cleanup = async () => {
    if (daemon !== undefined && daemon.exitCode === null) {
      spawnSync(process.execPath, [strataCli, '--socket', socket, 'mount', 'rm', '--force', 'bench'], { encoding: 'utf8' });
      daemon.kill('SIGTERM');
      for (let i = 0; i < 100 && daemon.exitCode === null && daemon.signalCode === null; i++) await sleep(50);
    }
    for (const mountPoint of sh('cat /proc/self/mountinfo').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${scratch}/`)).reverse()) {
      spawnSync('umount', ['-l', mountPoint]);
    }
    rmSync(scratch, { recursive: true, force: true });
  };
  process.once('SIGINT', () => { void cleanup().then(() => process.exit(130)); });

  try {
    process.stderr.write(`building ${files} small files into a tar…\n`);
    const tar = makeSmallTar(scratch, files);
    daemon = spawn(process.execPath, [stratad, '--root', root, '--socket', socket, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
    for (let i = 0; spawnSync(process.execPath, [strataCli, '--socket', socket, 'info']).status !== 0; i++) {
      if (i > 200 || daemon.exitCode !== null) fail('stratad did not start');
      await sleep(50);
    }
    cli('volume', 'create', 'bench');
    cli('mount', 'create', lower, '--target', target, '--name', 'bench', '--volume', 'bench:/vol');
    const upper = (JSON.parse(cli('--json', 'mount', 'inspect', 'bench')) as Array<{ GraphDriver: { Data: { UpperDir: string } } }>)[0]!.GraphDriver.Data.UpperDir;
    const volumeData = path.join(root, 'volumes/bench/_data');
    // Where a run's dir is seen by the workload, and where its bytes must land on disk.
    const places: Record<Place, { work: (run: string) => string; disk: (run: string) => string }> = {
      host: { work: (r) => path.join(host, r), disk: (r) => path.join(host, r) },
      volume: { work: (r) => path.join(target, 'vol', r), disk: (r) => path.join(volumeData, r) },
      upper: { work: (r) => path.join(target, 'in-upper', r), disk: (r) => path.join(upper, 'in-upper', r) },
    };

    const samples = new Map<string, number[]>();
    for (let run = 0; run < runs; run++) {
      // The order rotates each round, so drift on a shared machine does not always favour the same place.
      for (const place of [...PLACES.slice(run % PLACES.length), ...PLACES.slice(0, run % PLACES.length)]) {
        const name = `run${run}`;
        const work = places[place].work(name);
        const disk = places[place].disk(name);
        mkdirSync(work, { recursive: true });
        const add = (w: WorkloadName, seconds: number) => samples.set(`${w}/${place}`, [...(samples.get(`${w}/${place}`) ?? []), seconds]);
        process.stderr.write(`run ${run + 1}/${runs}: ${place}\n`);

        add('seq-write', timed('dd', ['if=/dev/zero', `of=${path.join(work, 'big.bin')}`, 'bs=1M', `count=${mib}`, 'conv=fsync', 'status=none']));
        if (lstatSync(path.join(disk, 'big.bin')).size !== mib * MiB) fail(`seq-write in ${place}: the file on disk is not ${mib} MiB`);
        dropCaches();
        add('seq-read', timed('dd', [`if=${path.join(work, 'big.bin')}`, 'of=/dev/null', 'bs=1M', 'status=none']));
        rmSync(path.join(work, 'big.bin'));

        sh(`cat '${tar}' > /dev/null`);
        mkdirSync(path.join(work, 'untar'));
        add('untar-small', timed('tar', ['-C', path.join(work, 'untar'), '-xf', tar]));
        const landed = countFiles(path.join(disk, 'untar'));
        if (landed !== files) fail(`untar-small in ${place}: ${landed} files landed on disk, expected ${files}`);
        rmSync(work, { recursive: true, force: true });
      }
    }
    if (readdirSync(upper).some((e) => e === 'vol' && readdirSync(path.join(upper, 'vol')).length > 0)) fail('volume writes reached the upper');

    const cell = (w: WorkloadName, p: Place) => {
      const values = samples.get(`${w}/${p}`) ?? [];
      const value = w === 'untar-small' ? median(values) : (mib / median(values));
      return { value, min: Math.min(...values), max: Math.max(...values) };
    };
    const unit = (w: WorkloadName) => (w === 'untar-small' ? 's' : 'MB/s');
    const rows = WORKLOADS.map((w) => {
      const c = Object.fromEntries(PLACES.map((p) => [p, cell(w, p)])) as Record<Place, ReturnType<typeof cell>>;
      // Ratios are of times: above 1 means slower than the host dir.
      const ratio = (p: Place) => (w === 'untar-small' ? c[p].value / c.host.value : c.host.value / c[p].value);
      const round = (n: number) => Number(n.toFixed(2));
      return { workload: w, unit: unit(w), host: round(c.host.value), volume: round(c.volume.value), upper: round(c.upper.value), volumeVsHost: round(ratio('volume')), upperVsHost: round(ratio('upper')) };
    });
    process.stdout.write(`# ${mib} MiB sequential file, ${files}-file untar, ${runs} run(s), median; MB/s is MiB/s; ratios are times relative to the host dir (1.00 = as fast)\n`);
    process.stdout.write(`${['workload', 'unit', 'host', 'volume', 'upper (FUSE)', 'volume/host', 'upper/host'].join('\t')}\n`);
    for (const r of rows) process.stdout.write(`${[r.workload, r.unit, r.host, r.volume, r.upper, r.volumeVsHost, r.upperVsHost].join('\t')}\n`);
    if (args.json) process.stdout.write(`${JSON.stringify({ mib, files, runs, rows }, null, 2)}\n`);
  } finally {
    await cleanup();
  }
}

main().catch((err: unknown) => {
  const e = err as { code?: string; message?: string };
  process.stderr.write(`strata-bench-volumes: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  process.exitCode = err instanceof StrataError && err.code === 'STRATA_BAD_OPTION' ? 2 : 1;
});
