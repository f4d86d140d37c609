/**
 * The benchmark harness (scripts/bench/) run the way a user runs it, in --quick mode: it must print a
 * table with every workload and no errors, write the same results as JSON, refuse bad options with a
 * one-line error, and leave no mount behind when it finishes, is interrupted, or was killed outright.
 * No timing is asserted: the figures themselves are the benchmark's business, not the test's.
 *
 * Needs the build (dist/) and root.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { readMountTableSync } from '../lib/mounts/mountinfo.js';
import { builtFile } from './helpers/build.js';

// A missing build fails the file, rather than dropping strata from the comparison (the bench runs this one).
const benchEntry = builtFile('dist/scripts/bench/run.js');
builtFile('dist/lib/cli/strata-overlay.js');
const workloads = [
  'seq-read', 'seq-write', 'tar-c-cold', 'tar-c-warm', 'find-ls-cold', 'find-ls-warm', 'parallel-cat', 'untar-small', 'rm-rf-subtree', 'copy-up',
  'metadata-stress', 'stat-pass1', 'stat-pass2', 'git-status', 'mount-chain',
];
/** Workloads whose timed work is the mount itself: their server CPU is not measured (it began before). */
const timesMount = ['mount-chain'];
/** The issue-13 workloads at tiny sizes, so the smoke run stays short. */
const tiny = ['--stress-ops', '50', '--git-files', '200', '--chain-layers', '5'];
const implementations = ['kernel', 'fuse-overlayfs', 'strata'];

// Everything the benchmark makes (scratch mounts via TMPDIR, the fixture cache) lives under this one dir.
const root = mkdtempSync(join(tmpdir(), 'strata-bench-smoke-'));
const cacheDir = join(root, 'cache');
const benchTmp = join(root, 'tmp');
mkdirSync(benchTmp);
const env = { ...process.env, TMPDIR: benchTmp };

function mountsUnder(dir: string): string[] {
  return readMountTableSync().map((entry) => entry.mountPoint).filter((m) => m.startsWith(`${dir}/`));
}

t.teardown(() => {
  for (const mountpoint of mountsUnder(root).reverse()) spawnSync('umount', ['-l', mountpoint]);
  rmSync(root, { recursive: true, force: true });
});

/** The FUSE server of a mount: the process whose command line names the mountpoint. */
function serverPidOf(mountpoint: string): number | undefined {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').includes(mountpoint)) return Number(name);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

function runBench(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [benchEntry, ...args], { env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Starts the benchmark and resolves once it logs that a mount is live (it then holds that mount). */
function startUntilMounted(args: string[]): Promise<{ child: ReturnType<typeof spawn>; exited: Promise<number | null>; stderr: () => string }> {
  const child = spawn(process.execPath, [benchEntry, '--log-level', 'debug', ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = new Promise<number | null>((done) => child.on('close', (code, signal) => done(code ?? (signal ? -1 : null))));
  return new Promise((resolveMounted, reject) => {
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.includes('"msg":"mounted"')) resolveMounted({ child, exited, stderr: () => stderr });
    });
    void exited.then((code) => reject(new Error(`benchmark exited ${code} before mounting: ${stderr.slice(-2000)}`)));
  });
}

t.test('--quick runs every workload on every implementation and prints a table and JSON', async (t) => {
  const outFile = join(root, 'results.json');
  const result = runBench(['--quick', ...tiny, '--impl', implementations.join(','), '--cache-dir', cacheDir, '--out', outFile]);
  t.equal(result.status, 0, `exit status (stderr tail: ${result.stderr.slice(-1500)})`);

  // The main table runs from its header to the first blank line (a CPU table and the JSON follow).
  const all = result.stdout.split('\n');
  const start = all.findIndex((l) => l.startsWith('workload '));
  const lines = all.slice(start, all.indexOf('', start));
  const header = lines[0] ?? '';
  t.ok(start >= 0, 'a table header is printed');
  for (const impl of implementations) t.match(header, impl, `table header names ${impl}`);
  for (const workload of workloads) {
    const row = lines.find((l) => l.startsWith(`${workload} `));
    t.ok(row, `table has a row for ${workload}`);
    t.notMatch(row ?? '', /ERROR/, `${workload} has no error`);
    // One median per implementation, each a number with its unit.
    t.equal((row ?? '').match(/\d+(\.\d+)? (s|MB\/s)/g)?.length, implementations.length, `${workload} shows a median per implementation`);
  }

  const json = JSON.parse(readFileSync(outFile, 'utf8')) as {
    workloads: {
      name: string;
      results: Record<string, { samples: number[]; serverCpuSamples: number[]; rssPeakKiBSamples: number[]; value?: number; error?: unknown }>;
      ratios: Record<string, number>;
    }[];
  };
  t.same(json.workloads.map((w) => w.name), workloads, 'the results file lists every workload in order');
  for (const w of json.workloads) {
    for (const impl of implementations) {
      const cell = w.results[impl];
      t.notOk(cell?.error, `${w.name} on ${impl}: no error in the JSON`);
      t.equal(cell?.samples.length, 1, `${w.name} on ${impl}: one sample in --quick`);
      t.ok((cell?.value ?? 0) > 0, `${w.name} on ${impl}: a positive median`);
    }
    if (implementations.includes('strata')) t.ok(w.ratios['strata/kernel'] !== undefined && w.ratios['strata/fuse-overlayfs'] !== undefined, `${w.name} has both ratios`);
  }
  t.match(result.stdout, /"workloads": \[/, 'the JSON is printed too');
  for (const impl of implementations.filter((i) => i !== 'kernel')) {
    t.ok(json.workloads.every((w) => w.results[impl]?.serverCpuSamples.length === (timesMount.includes(w.name) ? 0 : 1)), `${impl}: its server's CPU time is measured`);
    t.ok(json.workloads.every((w) => (w.results[impl]?.rssPeakKiBSamples[0] ?? 0) > 0), `${impl}: its server's peak RSS is measured`);
  }
  t.ok(json.workloads.every((w) => w.results.kernel?.rssPeakKiBSamples.length === 0), 'the kernel has no server RSS');
  t.match(result.stdout, /# time ratios[^\n]*\nworkload\s+strata\/kernel\s+strata\/fuse-overlayfs\n/, 'a ratio table');
  t.match(result.stdout, /# FUSE server peak RSS[^\n]*\nworkload\s+kernel\s+fuse-overlayfs\s+strata\n/, 'an RSS table');
  t.same(mountsUnder(root), [], 'no mount is left behind');
  t.same(readdirSync(benchTmp), [], 'the scratch dir is removed');
});

t.test('a strata variant given as strata+OPTIONS runs next to the others, with its own ratios', async (t) => {
  const outFile = join(root, 'variant.json');
  const result = runBench(['--quick', '--impl', 'kernel,strata,strata+entry_timeout=1', '--workload', 'stat-pass2', '--cache-dir', cacheDir, '--out', outFile]);
  t.equal(result.status, 0, `exit status (stderr tail: ${result.stderr.slice(-1500)})`);
  t.match(result.stdout, '# strata+entry_timeout=1 = strata -o entry_timeout=1', 'the variant is spelled out');
  const json = JSON.parse(readFileSync(outFile, 'utf8')) as { workloads: { ratios: Record<string, number> }[] };
  t.same(Object.keys(json.workloads[0]?.ratios ?? {}).sort(), ['strata+entry_timeout=1/kernel', 'strata/kernel', 'strata/strata+entry_timeout=1'].sort(), 'ratios of both over the kernel, and of strata over its variant');
  t.same(mountsUnder(root), [], 'no mount is left behind');
});

t.test('bad options get a one-line error naming what was wrong, before anything is mounted', async (t) => {
  for (const [args, named] of [
    [['--impl', 'kernel,zfs'], 'zfs'],
    [['--impl', 'strata+'], 'strata+'],
    [['--chain-layers', '120'], '--chain-layers'],
    [['--runs', '0'], '--runs'],
    [['--workload', 'tar-c-cold,nope'], 'nope'],
    [['--source', join(root, 'missing-tree')], 'missing-tree'],
    [['--bogus-flag'], 'bogus-flag'],
    [['--source', '/etc/hostname'], 'not a directory'],
    [['--out', '/etc/hostname/results.json'], 'cannot write the results file'],
  ] as const) {
    const result = runBench(['--quick', '--cache-dir', cacheDir, ...args]);
    t.equal(result.status, 2, `${args.join(' ')}: usage exit status`);
    t.equal(result.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line`);
    t.match(result.stderr, named, `${args.join(' ')}: names ${named}`);
    t.match(result.stderr, /STRATA_BAD_(OPTION|DIR)/, `${args.join(' ')}: stable code`);
  }
  t.same(mountsUnder(root), []);
});

t.test('Ctrl-C while a workload runs on a mount unmounts everything and removes the scratch dir', async (t) => {
  const { child, exited } = await startUntilMounted(['--quick', '--impl', 'fuse-overlayfs', '--workload', 'tar-c-cold', '--cache-dir', cacheDir]);
  t.ok(mountsUnder(benchTmp).length > 0, 'a mount is live when the signal is sent');
  child.kill('SIGINT');
  t.equal(await exited, 130, 'exits with the SIGINT status');
  t.same(mountsUnder(root), [], 'no mount is left behind');
  t.same(readdirSync(benchTmp), [], 'the scratch dir is removed');
});

t.test('a benchmark killed outright is cleaned up by the next run', async (t) => {
  const { child, exited } = await startUntilMounted(['--quick', '--impl', 'kernel', '--workload', 'tar-c-cold', '--cache-dir', cacheDir]);
  child.kill('SIGKILL');
  await exited;
  t.ok(mountsUnder(benchTmp).length > 0, 'the killed run left its mount');
  const leftovers = readdirSync(benchTmp);
  t.equal(leftovers.length, 1, 'the killed run left its scratch dir');
  // Its tar may still be finishing; the next run must cope (it detaches a busy mount).
  const result = runBench(['--quick', '--impl', 'kernel', '--workload', 'copy-up', '--cache-dir', cacheDir, '--out', join(root, 'after-kill.json')]);
  t.equal(result.status, 0, `the next run succeeds (stderr tail: ${result.stderr.slice(-1000)})`);
  t.match(result.stderr, 'cleaning up after a benchmark that did not exit cleanly');
  t.same(mountsUnder(root), [], 'the orphan mount is gone');
  t.same(readdirSync(benchTmp), [], 'the orphan scratch dir is gone');
});

t.test('a hung implementation times out: its cell fails, the rest of the run goes on, nothing stays mounted', async (t) => {
  // find-ls-cold drops the page cache (sync) before its command, so the server is stopped before it answers.
  const { exited, stderr } = await startUntilMounted(['--quick', '--impl', 'fuse-overlayfs', '--workload', 'find-ls-cold,copy-up', '--timeout', '5', '--cache-dir', cacheDir, '--out', join(root, 'hung.json')]);
  const mountpoint = mountsUnder(benchTmp)[0] ?? '';
  const server = serverPidOf(mountpoint);
  t.ok(server, 'found the fuse-overlayfs server of the mount');
  if (server === undefined) return;
  t.teardown(() => {
    try {
      process.kill(server, 'SIGKILL');
    } catch {
      // the benchmark already killed it
    }
  });
  process.kill(server, 'SIGSTOP');
  t.equal(await exited, 1, 'exits 1: a workload failed');
  t.match(stderr(), 'timed out after 5 s');
  t.match(stderr(), 'STRATA_BENCH_FAILED: 1 workload(s) failed: find-ls-cold on fuse-overlayfs');
  const json = JSON.parse(readFileSync(join(root, 'hung.json'), 'utf8')) as { workloads: { name: string; results: Record<string, { error?: unknown; value?: number }> }[] };
  t.ok(json.workloads[0]?.results['fuse-overlayfs']?.error, 'the hung cell has an error');
  t.ok((json.workloads[1]?.results['fuse-overlayfs']?.value ?? 0) > 0, 'the next workload still ran');
  t.same(mountsUnder(root), [], 'no mount is left behind');
  t.same(readdirSync(benchTmp), [], 'the scratch dir is removed');
});
