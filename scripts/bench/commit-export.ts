#!/usr/bin/env node
/**
 * The commit and export benchmark (issue 9): `strata mount commit` of a 1-file change and of a 20k-file change on
 * an image of many files, and `strata image export` of that image, each next to `tar -c` of the same data (the
 * upper for a commit, the layer dirs for an export) as the reference. A real stratad on a scratch state dir,
 * driven by the real CLI. The commit's own report (files read, lower names looked up) is printed too: a 1-file
 * commit must read 1 file whatever the image size.
 *
 *   node dist/scripts/bench/commit-export.js [--base-files 50000] [--change-files 20000] [--dir /var/tmp] [--runs 3]
 *
 * Prints medians (min-max) in seconds and the ratio to tar -c; everything it made is removed at exit.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { StrataError } from '../../lib/errors.js';

const distDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const stratad = path.join(distDir, 'daemon/stratad.js');
const strataCli = path.join(distDir, 'lib/cli/strata.js');

function fail(message: string): never {
  throw new StrataError('STRATA_BENCH_FAILED', message);
}

function run(file: string, args: string[]): { seconds: number; stdout: string } {
  const start = process.hrtime.bigint();
  const r = spawnSync(file, args, { encoding: 'utf8', maxBuffer: 256 << 20 });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.status !== 0) fail(`${file} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr ?? '').trim().split('\n')[0]}`);
  return { seconds, stdout: r.stdout };
}

function makeFiles(dir: string, count: number, prefix: string): void {
  for (let i = 0; i < count; i++) {
    const sub = path.join(dir, `${prefix}${Math.floor(i / 1000)}`);
    if (i % 1000 === 0) mkdirSync(sub, { recursive: true });
    writeFileSync(path.join(sub, `f${i}`), `${prefix} file ${i}\n`);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const argv = yargs(hideBin(process.argv))
    .option('base-files', { type: 'number', default: 50_000 })
    .option('change-files', { type: 'number', default: 20_000 })
    .option('runs', { type: 'number', default: 3 })
    .option('dir', { type: 'string', default: '/var/tmp' })
    .strict().parseSync();
  const scratch = mkdtempSync(path.join(argv.dir, 'strata-bench-commit-'));
  const root = path.join(scratch, 'root');
  const socket = path.join(scratch, 'strata.sock');
  let daemon: ChildProcess | undefined;
  const cli = (...args: string[]) => run(process.execPath, [strataCli, '--socket', socket, ...args]);
  const cleanup = () => {
    spawnSync(process.execPath, [strataCli, '--socket', socket, 'mount', 'rm', '--force', 'bench'], { encoding: 'utf8' });
    daemon?.kill('SIGTERM');
    spawnSync('sh', ['-c', `sleep 1; umount -l ${scratch}/mnt 2>/dev/null; rm -rf ${scratch}`]);
  };
  process.on('SIGINT', () => { cleanup(); process.exit(130); });
  try {
    const base = path.join(scratch, 'base');
    makeFiles(base, argv.baseFiles, 'base');
    run('tar', ['-C', base, '-cf', path.join(scratch, 'base.tar'), '.']);
    daemon = spawn(process.execPath, [stratad, '--root', root, '--socket', socket, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
    for (let i = 0; spawnSync(process.execPath, [strataCli, '--socket', socket, 'info']).status !== 0; i++) {
      if (i > 200 || daemon.exitCode !== null) fail('stratad did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    const layer = JSON.parse(cli('--json', 'layer', 'import', path.join(scratch, 'base.tar')).stdout) as { chainID: string };
    const mnt = path.join(scratch, 'mnt');
    mkdirSync(mnt);
    const mount = JSON.parse(cli('--json', 'mount', 'create', layer.chainID, '--target', mnt, '--name', 'bench').stdout) as { GraphDriver: { Data: { UpperDir: string } } };
    const upper = mount.GraphDriver.Data.UpperDir;

    const rows: Array<[string, number[], number[], string]> = [];
    const bench = (label: string, strata: () => { seconds: number; stdout: string }, reference: () => number, note: (out: string) => string) => {
      const s: number[] = [];
      const r: number[] = [];
      let last = '';
      for (let i = 0; i < argv.runs; i++) {
        r.push(reference());
        const out = strata();
        s.push(out.seconds);
        last = out.stdout;
      }
      rows.push([label, s, r, note(last)]);
    };
    // Through a pipe: GNU tar writing to /dev/null itself skips reading file data.
  const tarC = (dir: string) => () => run('sh', ['-c', `tar -C ${dir} --xattrs -cf - . | cat > /dev/null`]).seconds;
    const stats = (out: string) => {
      const r = JSON.parse(out) as { Stats: { filesRead: number; lowerLookups: number }; HeldMs: number; LayerMs: number };
      return `files read ${r.Stats.filesRead}, lower lookups ${r.Stats.lowerLookups}, writes held ${r.HeldMs} ms, layer ${r.LayerMs} ms`;
    };
    let n = 0;

    writeFileSync(path.join(mnt, 'one-file'), 'changed\n');
    bench(`commit, 1-file change on ${argv.baseFiles} files`, () => cli('--json', 'mount', 'commit', 'bench', `bench:c${n++}`), tarC(upper), stats);

    makeFiles(mnt, argv.changeFiles, 'chg');
    bench(`commit, ${argv.changeFiles}-file change`, () => cli('--json', 'mount', 'commit', 'bench', `bench:c${n++}`), tarC(upper), stats);

    let e = 0;
    bench(`export --format oci (gzip) of the ${argv.changeFiles + argv.baseFiles}-file image`,
      () => cli('--json', 'image', 'export', `bench:c${n - 1}`, '-o', path.join(scratch, `export-${e++}`)),
      () => run('sh', ['-c', `tar -C ${root}/layers -cf - . | gzip -6 > /dev/null`]).seconds, () => 'vs tar -c | gzip of the layer dirs');
    let d = 0;
    bench('export --format docker (uncompressed)',
      () => cli('--json', 'image', 'export', `bench:c${n - 1}`, '--format', 'docker', '-o', path.join(scratch, `docker-${d++}.tar`)),
      tarC(path.join(root, 'layers')), () => 'vs tar -c of the layer dirs');

    process.stdout.write(`${'workload'.padEnd(58)} ${'strata s'.padEnd(20)} ${'tar -c s'.padEnd(20)} ratio  notes\n`);
    for (const [label, s, r, note] of rows) {
      const fmt = (xs: number[]) => `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)})`;
      process.stdout.write(`${label.padEnd(58)} ${fmt(s).padEnd(20)} ${fmt(r).padEnd(20)} ${(median(s) / median(r)).toFixed(1).padEnd(6)} ${note}\n`);
    }
  } finally {
    cleanup();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`);
  process.exitCode = 1;
});
