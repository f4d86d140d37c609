#!/usr/bin/env node
/**
 * The overlay benchmark of issues 2 and 13: the same workloads, in one run and side by side, on kernel
 * overlayfs, fuse-overlayfs and strata-overlay (any number of strata variants, e.g. its transports). Prints each
 * workload's median (min-max) per candidate, strata's time ratios, the FUSE servers' CPU and peak RSS, as tables
 * and as JSON (also written to a results file).
 *
 *   npm run build && node dist/scripts/bench/run.js [--quick] [--impl kernel,fuse-overlayfs,strata,strata-fuse-native] [--runs N]
 *
 * Needs root (mount, drop_caches). Every mount it makes is unmounted on exit, on errors and on Ctrl-C;
 * scratch dirs of a benchmark that was killed outright are cleaned at the next start.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { StrataError } from '../../lib/errors.js';
import { createLogger, type Logger } from '../../lib/log.js';
import { describeFixture, isProcessAlive, loadOrBuildFixture, type Fixture, type FixtureSpec } from './fixture.js';
import { CANDIDATE_ALIASES, checkAvailable, cpuSecondsOf, DEFAULT_CANDIDATES, findServerPid, isMounted, liveMountpoints, MountTracker, parseCandidate, peakRssKiB, type Candidate, type StrataLaunch } from './mounts.js';
import { WORKLOAD_NAMES, WORKLOADS } from './registry.js';
import { formatCpuTable, formatRatioTable, formatRssTable, formatTable, summarize, type WorkloadReport } from './report.js';
import { CommandRunner, type CommandResult } from './shell.js';
import type { Workload, WorkloadSizes } from './workloads.js';

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const SCRATCH_PREFIX = 'strata-bench-';
const OWNER_FILE = 'owner.pid';

interface BenchOptions {
  readonly candidates: readonly Candidate[];
  readonly workloads: readonly Workload[];
  readonly runs: number;
  readonly fixture: FixtureSpec;
  readonly sizes: WorkloadSizes;
  readonly cacheDir: string;
  readonly outFile: string;
  readonly strata: StrataLaunch;
  readonly quick: boolean;
  /** A timed command still running after this long is a hung implementation: it is killed and the cell fails. */
  readonly timeoutSeconds: number;
}

const FULL = { timeoutSeconds: 600, runs: 3, maxFiles: 50_000, bigFileMiB: 1024, copyUpMiB: 256, smallFiles: 20_000, stressOps: 2_500, gitFiles: 20_000, chainLayers: 50 };
const QUICK = { timeoutSeconds: 120, runs: 1, maxFiles: 2_000, bigFileMiB: 64, copyUpMiB: 32, smallFiles: 2_000, stressOps: 100, gitFiles: 500, chainLayers: 50 };
const STRESS_PROCESSES = 4;

function parseList<T extends string>(what: string, raw: string, allowed: readonly string[], isT: (v: string) => v is T): T[] {
  const items = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new StrataError('STRATA_BAD_OPTION', `--${what} is empty (choose from ${allowed.join(', ')})`);
  for (const item of items) {
    if (!isT(item)) throw new StrataError('STRATA_BAD_OPTION', `--${what}: unknown "${item}" (choose from ${allowed.join(', ')})`);
  }
  return [...new Set(items)] as T[];
}

function positiveInt(name: string, value: number | undefined, fallback: number): number {
  const n = value ?? fallback;
  if (!Number.isInteger(n) || n < 1) throw new StrataError('STRATA_BAD_OPTION', `--${name} must be a positive integer, got ${String(value)}`);
  return n;
}

/** --impl: each item a candidate of mounts.ts parseCandidate; `strata+A+B` passes -o A,B (commas split the list). */
function parseCandidates(raw: string): Candidate[] {
  const items = [...new Set(raw.split(',').map((s) => s.trim()).filter(Boolean))];
  const allowed = `kernel, fuse-overlayfs, strata, ${Object.keys(CANDIDATE_ALIASES).join(', ')}, strata+OPTION[+OPTION...]`;
  if (items.length === 0) throw new StrataError('STRATA_BAD_OPTION', `--impl is empty (choose from ${allowed})`);
  return items.map((item) => {
    const candidate = parseCandidate(item);
    if (!candidate) throw new StrataError('STRATA_BAD_OPTION', `--impl: unknown "${item}" (choose from ${allowed})`);
    return candidate.strataOptions.includes('+') ? { ...candidate, strataOptions: candidate.strataOptions.replaceAll('+', ',') } : candidate;
  });
}

/** Two-digit layer names keep 99 layers' paths within the one page the kernel takes for mount options. */
function chainLayers(value: number | undefined, fallback: number): number {
  const n = positiveInt('chain-layers', value, fallback);
  if (n > 99) throw new StrataError('STRATA_BAD_OPTION', `--chain-layers must be at most 99, got ${n}`);
  return n;
}

async function parseOptions(argv: string[]): Promise<BenchOptions & { logLevel: string }> {
  const args = await yargs(argv)
    .scriptName('node dist/scripts/bench/run.js')
    .usage('$0 [options]\n\nBenchmark kernel overlayfs, fuse-overlayfs and strata-overlay side by side (needs root).')
    .option('quick', { type: 'boolean', default: false, describe: 'small sizes and 1 run: a smoke run in under a minute' })
    .option('impl', {
      type: 'string',
      default: DEFAULT_CANDIDATES.join(','),
      describe: `comma-separated candidates, run interleaved: kernel, fuse-overlayfs, strata, ${Object.keys(CANDIDATE_ALIASES).join(', ')}, or strata+OPTION[+OPTION...] (strata with those -o options)`,
    })
    .option('workload', { type: 'string', default: WORKLOAD_NAMES.join(','), describe: 'comma-separated workloads to run' })
    .option('timeout', { type: 'number', describe: `seconds before a timed command counts as hung (default ${FULL.timeoutSeconds}, --quick ${QUICK.timeoutSeconds})` })
    .option('runs', { type: 'number', describe: `runs per workload and implementation; the median is reported (default ${FULL.runs}, --quick ${QUICK.runs})` })
    .option('source', { type: 'string', default: '/usr/share', describe: 'real tree copied (once) into the lower' })
    .option('max-files', { type: 'number', describe: `cap on files copied from --source (default ${FULL.maxFiles}, --quick ${QUICK.maxFiles})` })
    .option('big-mib', { type: 'number', describe: `size of the sequential read/write file (default ${FULL.bigFileMiB}, --quick ${QUICK.bigFileMiB})` })
    .option('copyup-mib', { type: 'number', describe: `size of the copied-up file (default ${FULL.copyUpMiB}, --quick ${QUICK.copyUpMiB})` })
    .option('stress-ops', { type: 'number', describe: `operations per process of metadata-stress (default ${FULL.stressOps}, --quick ${QUICK.stressOps})` })
    .option('git-files', { type: 'number', describe: `files in the git-status checkout (default ${FULL.gitFiles}, --quick ${QUICK.gitFiles})` })
    .option('chain-layers', { type: 'number', describe: `layers in the mount-chain workload (default ${FULL.chainLayers})` })
    .option('small-files', { type: 'number', describe: `files in the untar workload (default ${FULL.smallFiles}, --quick ${QUICK.smallFiles})` })
    .option('cache-dir', { type: 'string', default: '/var/tmp/strata-bench', describe: 'where the fixture is built once and reused' })
    .option('out', { type: 'string', describe: 'results JSON file (default <cache-dir>/results/<time>.json)' })
    .option('strata-options', { type: 'string', default: '', describe: 'extra -o options for strata-overlay only (e.g. attr_timeout=1), to compare settings' })
    .option('strata-entry', { type: 'string', default: join(REPO_ROOT, 'dist/lib/cli/strata-overlay.js'), describe: 'strata-overlay program run with node' })
    .option('log-level', { type: 'string', default: process.env.STRATA_LOG_LEVEL ?? 'info', describe: 'pino level for progress on stderr' })
    .strict()
    .help()
    .fail((message, error) => {
      throw error ?? new StrataError('STRATA_BAD_OPTION', message);
    })
    .parseAsync();

  const sizes = args.quick ? QUICK : FULL;
  const source = resolve(args.source);
  if (!existsSync(source)) throw new StrataError('STRATA_BAD_DIR', `--source ${source} does not exist`);
  if (!statSync(source).isDirectory()) throw new StrataError('STRATA_BAD_DIR', `--source ${source} is not a directory`);
  const cacheDir = resolve(args['cache-dir']);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const workloadNames = parseList('workload', args.workload, WORKLOAD_NAMES, (v): v is string => WORKLOAD_NAMES.includes(v));
  return {
    candidates: parseCandidates(args.impl),
    workloads: WORKLOADS.filter((w) => workloadNames.includes(w.name)),
    runs: positiveInt('runs', args.runs, sizes.runs),
    timeoutSeconds: positiveInt('timeout', args.timeout, sizes.timeoutSeconds),
    fixture: {
      source,
      maxFiles: positiveInt('max-files', args['max-files'], sizes.maxFiles),
      bigFileMiB: positiveInt('big-mib', args['big-mib'], sizes.bigFileMiB),
      copyUpMiB: positiveInt('copyup-mib', args['copyup-mib'], sizes.copyUpMiB),
      smallFiles: positiveInt('small-files', args['small-files'], sizes.smallFiles),
    },
    sizes: {
      stressOps: positiveInt('stress-ops', args['stress-ops'], sizes.stressOps),
      stressProcesses: STRESS_PROCESSES,
      gitFiles: positiveInt('git-files', args['git-files'], sizes.gitFiles),
      chainLayers: chainLayers(args['chain-layers'], sizes.chainLayers),
    },
    cacheDir,
    outFile: resolve(args.out ?? join(cacheDir, 'results', `${args.quick ? 'quick' : 'full'}-${stamp}.json`)),
    strata: { entry: resolve(args['strata-entry']), extraOptions: args['strata-options'] },
    quick: args.quick,
    logLevel: args['log-level'],
  };
}

/** Scratch dirs of benchmarks that died without cleaning up: unmount what is left under them, then remove them. */
async function cleanOrphanScratch(mounts: MountTracker, log: Logger): Promise<void> {
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith(SCRATCH_PREFIX)) continue;
    const dir = join(tmpdir(), name);
    let owner = 0;
    try {
      owner = Number(readFileSync(join(dir, OWNER_FILE), 'utf8'));
    } catch {
      continue; // not ours, or still being created
    }
    if (isProcessAlive(owner)) continue;
    log.warn({ dir, owner }, 'cleaning up after a benchmark that did not exit cleanly');
    for (const mountpoint of liveMountpoints().filter((m) => m.startsWith(`${dir}/`))) await mounts.unmount(mountpoint);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function dropCaches(runner: CommandRunner): Promise<void> {
  await runner.run('sync', []);
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
}

function hostInfo(): Record<string, unknown> {
  const quiet = (file: string, args: string[]): string => {
    try {
      return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    } catch (err) {
      return `unknown (${(err as Error).message.split('\n')[0]})`;
    }
  };
  return {
    kernel: release(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    node: process.version,
    // The machine is shared: a high load average means the figures of this run are noisier than usual.
    loadAverageAtStart: loadavg().map((l) => Number(l.toFixed(2))),
    fuseOverlayfs: quiet('fuse-overlayfs', ['--version']).split('\n').find((l) => l.startsWith('fuse-overlayfs')) ?? 'unknown',
    strataCommit: quiet('git', ['-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD']),
  };
}

interface Session {
  readonly runner: CommandRunner;
  readonly mounts: MountTracker;
  readonly scratch: string;
  readonly log: Logger;
  readonly clockTicksPerSecond: number;
}

interface RunSample {
  readonly seconds: number;
  /** CPU the FUSE server process used during the timed command; undefined for the kernel. */
  readonly serverCpuSeconds?: number;
  /** The FUSE server's VmHWM (KiB) after the timed command; undefined for the kernel. */
  readonly rssPeakKiB?: number;
}

/** One timed run: fresh upper and mount, warm or cold cache as the workload states, checked result. */
async function runOnce(session: Session, options: BenchOptions, fixture: Fixture, workload: Workload, candidate: Candidate, run: number): Promise<RunSample> {
  const { runner, mounts } = session;
  const impl = candidate.name;
  // The run dir's name must not hold the candidate's options (commas and = would end up in mount options).
  const runDir = join(session.scratch, `${workload.name}.${options.candidates.indexOf(candidate)}.${run}`);
  const base = { fixture, cacheDir: options.cacheDir, sizes: options.sizes, runner };
  const lowerdir = workload.lowerdirs?.(base).join(':') ?? fixture.lowerdir;
  const dirs = { lowerdir, upperdir: join(runDir, 'upper'), workdir: join(runDir, 'work'), mountpoint: join(runDir, 'mnt') };
  for (const dir of [dirs.upperdir, dirs.workdir, dirs.mountpoint]) mkdirSync(dir, { recursive: true });
  let serverPid: number | undefined;
  try {
    if (workload.cache === 'warm') await workload.warm?.(base);
    const mountStarted = process.hrtime.bigint();
    await mounts.mount(candidate, dirs, options.strata);
    const mountSeconds = Number(process.hrtime.bigint() - mountStarted) / 1e9;
    try {
      if (workload.cache === 'cold') await dropCaches(runner);
      serverPid = candidate.kind === 'kernel' ? undefined : findServerPid(dirs.mountpoint);
      const ctx = { ...base, mountpoint: dirs.mountpoint, upperdir: dirs.upperdir };
      await workload.prepare?.(ctx);
      const cpuBefore = serverPid === undefined ? undefined : cpuSecondsOf(serverPid, session.clockTicksPerSecond);
      // Without a command, the mount was the timed work (its server CPU is then not measured: it began before).
      const timed: Promise<CommandResult> = workload.run
        ? workload.run(ctx)
        : Promise.resolve({ exitCode: 0, signal: null, stdout: '', stderr: '', seconds: mountSeconds });
      const result = await runWithDeadline(timed, options.timeoutSeconds, () => {
        // Killing the server aborts its FUSE connection, which frees a command blocked inside the mount.
        session.log.error({ workload: workload.name, implementation: impl, timeoutSeconds: options.timeoutSeconds }, 'timed out; killing the command and the server');
        runner.killAll();
        if (serverPid !== undefined) killQuietly(serverPid);
      });
      const cpuAfter = serverPid === undefined ? undefined : cpuSecondsOf(serverPid, session.clockTicksPerSecond);
      const rssPeakKiB = serverPid === undefined ? undefined : peakRssKiB(serverPid);
      workload.check(ctx, result);
      const serverCpuSeconds =
        workload.run && cpuBefore !== undefined && cpuAfter !== undefined
          ? Math.round((cpuAfter - cpuBefore) * session.clockTicksPerSecond) / session.clockTicksPerSecond
          : undefined;
      return { seconds: result.seconds, serverCpuSeconds, rssPeakKiB };
    } finally {
      await mounts.unmount(dirs.mountpoint);
      // A server still winding down would steal CPU from the next run.
      if (serverPid !== undefined && !(await processExits(serverPid, 10_000))) {
        session.log.warn({ implementation: impl, pid: serverPid }, 'the FUSE server is still running 10 s after its unmount');
      }
    }
  } finally {
    // Never recurse into a mount that is somehow still live: that would delete through it.
    if (isMounted(dirs.mountpoint)) session.log.error({ mountpoint: dirs.mountpoint }, 'still mounted; leaving its run dir in place');
    else rmSync(runDir, { recursive: true, force: true });
  }
}

/** A zombie counts as exited: a daemonized server's parent (here, often not a reaping init) may never reap it. */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function processExits(pid: number, withinMs: number): Promise<boolean> {
  for (let waited = 0; waited < withinMs; waited += 50) {
    if (!isRunning(pid)) return true;
    await sleep(50);
  }
  return !isRunning(pid);
}

/**
 * Resolves like `work`, unless it is still pending after `seconds`: then `onTimeout` runs (it must make `work`
 * settle, by killing what it waits for) and the result is a STRATA_BENCH_FAILED error.
 */
async function runWithDeadline<T>(work: Promise<T>, seconds: number, onTimeout: () => void): Promise<T> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    onTimeout();
  }, seconds * 1000);
  try {
    const value = await work;
    if (timedOut) throw new StrataError('STRATA_BENCH_FAILED', `timed out after ${seconds} s`);
    return value;
  } catch (err) {
    if (timedOut) throw new StrataError('STRATA_BENCH_FAILED', `timed out after ${seconds} s; the command and the server were killed`, { cause: err });
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

function errorOf(err: unknown): { code: string; message: string } {
  const e = err as { code?: unknown; message?: string };
  return { code: typeof e.code === 'string' ? e.code : 'STRATA_BENCH_FAILED', message: e.message ?? String(err) };
}

async function benchmark(session: Session, options: BenchOptions): Promise<{ reports: WorkloadReport[]; fixture: Fixture }> {
  const { log } = session;
  const fixture = await loadOrBuildFixture(options.cacheDir, options.fixture, session.runner, log.child({ component: 'fixture' }));
  const names = options.candidates.map((c) => c.name);
  log.info({ fixture: describeFixture(fixture), runs: options.runs, candidates: names }, 'benchmark starting');
  for (const workload of options.workloads) {
    await workload.setup?.({ fixture, cacheDir: options.cacheDir, sizes: options.sizes, runner: session.runner, log: log.child({ component: 'setup', workload: workload.name }) });
  }
  const reports: WorkloadReport[] = [];
  for (const workload of options.workloads) {
    const report: WorkloadReport = {
      name: workload.name,
      description: workload.describe(fixture, options.sizes),
      cache: workload.cache,
      unit: workload.metric,
      bytes: workload.bytes?.(fixture),
      results: Object.fromEntries(names.map((i) => [i, { samples: [], serverCpuSamples: [], rssPeakKiBSamples: [] }])),
      ratios: {},
    };
    // Implementations alternate within each round, so drift on the shared machine hits them alike.
    for (let run = 1; run <= options.runs; run++) {
      for (const candidate of options.candidates) {
        const impl = candidate.name;
        const cell = report.results[impl];
        if (!cell || cell.error) continue;
        try {
          const sample = await runOnce(session, options, fixture, workload, candidate, run);
          cell.samples.push(sample.seconds);
          if (sample.serverCpuSeconds !== undefined) cell.serverCpuSamples.push(sample.serverCpuSeconds);
          if (sample.rssPeakKiB !== undefined) (cell.rssPeakKiBSamples ??= []).push(sample.rssPeakKiB);
          log.info({ workload: workload.name, implementation: impl, run, seconds: Number(sample.seconds.toFixed(4)), serverCpuSeconds: sample.serverCpuSeconds, rssPeakKiB: sample.rssPeakKiB }, 'run done');
        } catch (err) {
          cell.error = errorOf(err);
          log.error({ workload: workload.name, implementation: impl, run, err: cell.error.message }, 'run failed');
        }
      }
    }
    summarize(report, names);
    reports.push(report);
  }
  return { reports, fixture };
}

async function main(): Promise<number> {
  // A reader that stops early (`| head`) must not crash the run before it has cleaned up.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
  let options: Awaited<ReturnType<typeof parseOptions>>;
  try {
    options = await parseOptions(hideBin(process.argv));
  } catch (err) {
    process.stderr.write(`strata-bench: ${errorOf(err).code}: ${errorOf(err).message}\n`);
    return 2;
  }
  const log = createLogger({ level: options.logLevel, name: 'strata-bench' });
  try {
    // Found out now rather than after a half-hour run.
    mkdirSync(dirname(options.outFile), { recursive: true });
    accessSync(dirname(options.outFile), fsConstants.W_OK);
  } catch (err) {
    process.stderr.write(`strata-bench: STRATA_BAD_DIR: cannot write the results file ${options.outFile}: ${(err as Error).message}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('strata-bench: STRATA_BAD_OPTION: must run as root (it mounts overlays and drops page caches)\n');
    return 2;
  }
  for (const candidate of options.candidates) {
    const missing = checkAvailable(candidate.kind, options.strata.entry);
    if (missing) {
      process.stderr.write(`strata-bench: STRATA_BAD_OPTION: cannot run ${candidate.name}: ${missing}; choose others with --impl\n`);
      return 2;
    }
  }

  const runner = new CommandRunner(log.child({ component: 'shell' }));
  const mounts = new MountTracker(runner, log.child({ component: 'mounts' }));
  await cleanOrphanScratch(mounts, log);
  const scratch = mkdtempSync(join(tmpdir(), SCRATCH_PREFIX));
  writeFileSync(join(scratch, OWNER_FILE), String(process.pid));
  const clockTicksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  const session: Session = { runner, mounts, scratch, log, clockTicksPerSecond };

  let cleaning: Promise<void> | undefined;
  const cleanUp = (): Promise<void> =>
    (cleaning ??= (async () => {
      runner.killAll();
      await mounts.unmountAll();
      rmSync(scratch, { recursive: true, force: true });
    })());
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      log.warn({ signal }, 'interrupted: unmounting everything');
      void cleanUp().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
    });
  }

  const startedAt = new Date().toISOString();
  // Taken before the run: the commit and load must describe what was measured, not what is there at the end.
  const hostAtStart = hostInfo();
  try {
    const { reports, fixture } = await benchmark(session, options);
    const names = options.candidates.map((c) => c.name);
    const results = {
      startedAt,
      finishedAt: new Date().toISOString(),
      mode: options.quick ? 'quick' : 'full',
      runs: options.runs,
      host: { ...hostAtStart, loadAverageAtEnd: loadavg().map((l) => Number(l.toFixed(2))) },
      fixture: { dir: fixture.dir, ...fixture.manifest },
      implementations: names,
      candidates: options.candidates,
      sizes: options.sizes,
      strataOptions: options.strata.extraOptions,
      ratioDefinition:
        'median time of a strata candidate divided by median time of the other candidate; above 1 means the strata candidate is slower. ratioRanges: min and max of the per-round ratios',
      workloads: reports,
    };
    const variants = options.candidates.filter((c) => c.strataOptions).map((c) => `${c.name} = strata -o ${c.strataOptions}`);
    process.stdout.write(
      `# ${options.runs} run(s) per cell, median (min-max) shown; fixture ${describeFixture(fixture)}\n` +
        (variants.length ? `# ${variants.join('; ')}\n` : '') +
        (options.strata.extraOptions ? `# every strata candidate also gets: -o ${options.strata.extraOptions}\n` : '') +
        `${formatTable(reports, names)}\n\n`,
    );
    const ratioTable = formatRatioTable(reports, names);
    if (ratioTable) process.stdout.write(`# time ratios: median over median (min-max of the per-round ratios); above 1: the first is slower\n${ratioTable}\n\n`);
    const fuseImpls = options.candidates.filter((c) => c.kind !== 'kernel').map((c) => c.name);
    if (fuseImpls.length) {
      process.stdout.write(`# FUSE server CPU seconds during the timed command (median)\n${formatCpuTable(reports, fuseImpls)}\n\n`);
      process.stdout.write(`# FUSE server peak RSS (VmHWM after the timed command, highest of the runs; the kernel has no server)\n${formatRssTable(reports, names)}\n\n`);
    }
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    // Written after printing, so a full disk at the end loses nothing that was measured.
    writeFileSync(options.outFile, `${JSON.stringify(results, null, 2)}\n`);
    process.stderr.write(`strata-bench: results written to ${options.outFile}\n`);
    const failed = reports.flatMap((r) => Object.entries(r.results).filter(([, c]) => c?.error).map(([i]) => `${r.name} on ${i}`));
    if (failed.length) {
      process.stderr.write(`strata-bench: STRATA_BENCH_FAILED: ${failed.length} workload(s) failed: ${failed.join(', ')}\n`);
      return 1;
    }
    return 0;
  } catch (err) {
    const { code, message } = errorOf(err);
    process.stderr.write(`strata-bench: ${code}: ${message}\n`);
    return 1;
  } finally {
    await cleanUp();
  }
}

process.exitCode = await main();
