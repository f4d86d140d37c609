/**
 * The overlay implementations under test, mounted with the same lower/upper/work layout, and a tracker that
 * guarantees every mount the benchmark made is gone when it exits (normally, on an error or on Ctrl-C).
 *
 * A candidate is one column of the results: an implementation kind plus, for strata, the -o options it runs
 * with, so one run can hold strata's default transport and `transport=fuse-native` side by side.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError } from '../../lib/errors.js';
import type { Logger } from '../../lib/log.js';
import { CommandRunner } from './shell.js';

export const IMPLEMENTATION_KINDS = ['kernel', 'fuse-overlayfs', 'strata'] as const;
export type ImplementationKind = (typeof IMPLEMENTATION_KINDS)[number];

export interface Candidate {
  /** The column name: `kernel`, `fuse-overlayfs`, `strata`, an alias such as `strata-fuse-native`, or `strata+OPTS`. */
  readonly name: string;
  readonly kind: ImplementationKind;
  /** -o options of this candidate (strata only), e.g. "transport=fuse-native"; empty for its defaults. */
  readonly strataOptions: string;
}

/** Named strata variants, so the common comparisons need no option syntax on the command line. */
export const CANDIDATE_ALIASES: Readonly<Record<string, string>> = {
  'strata-fuse-native': 'transport=fuse-native',
  'strata-volatile': 'volatile',
};

/** Issue 13's comparison: both references and both of strata's transports, interleaved. */
export const DEFAULT_CANDIDATES = ['kernel', 'fuse-overlayfs', 'strata', 'strata-fuse-native'] as const;

/**
 * `kernel`, `fuse-overlayfs`, `strata`, an alias of CANDIDATE_ALIASES, or `strata+OPT[,OPT...]` (strata with
 * those -o options; the column is named by the spec). Undefined for anything else.
 */
export function parseCandidate(spec: string): Candidate | undefined {
  if ((IMPLEMENTATION_KINDS as readonly string[]).includes(spec)) return { name: spec, kind: spec as ImplementationKind, strataOptions: '' };
  const alias = CANDIDATE_ALIASES[spec];
  if (alias !== undefined) return { name: spec, kind: 'strata', strataOptions: alias };
  const plus = /^strata\+(.+)$/.exec(spec);
  if (plus?.[1] && !/[\s:]/.test(plus[1])) return { name: spec, kind: 'strata', strataOptions: plus[1] };
  return undefined;
}

/** True for candidates whose time is divided by the others' in the ratio table (every strata variant). */
export function isStrataCandidate(name: string): boolean {
  return name === 'strata' || name.startsWith('strata-') || name.startsWith('strata+');
}

export interface OverlayDirs {
  /** Colon-separated lower dirs, top first. */
  readonly lowerdir: string;
  readonly upperdir: string;
  readonly workdir: string;
  readonly mountpoint: string;
}

/** How strata-overlay is started: its compiled entry point and extra -o options for every strata candidate. */
export interface StrataLaunch {
  readonly entry: string;
  /** Appended to every strata candidate's -o, e.g. "attr_timeout=1"; empty for its defaults. */
  readonly extraOptions: string;
}

/** How to start one candidate: the command line a user would type. */
export function mountCommand(candidate: Candidate, dirs: OverlayDirs, strata: StrataLaunch): [string, string[]] {
  const layout = `lowerdir=${dirs.lowerdir},upperdir=${dirs.upperdir},workdir=${dirs.workdir}`;
  switch (candidate.kind) {
    case 'kernel':
      // The kernel is the semantic reference with these options (see issue 2); its defaults here are off.
      return ['mount', ['-t', 'overlay', 'overlay', '-o', `${layout},redirect_dir=on,index=on`, dirs.mountpoint]];
    case 'fuse-overlayfs':
      return ['fuse-overlayfs', ['-o', layout, dirs.mountpoint]];
    case 'strata': {
      const options = [layout, candidate.strataOptions, strata.extraOptions].filter(Boolean).join(',');
      return [process.execPath, [strata.entry, '-o', options, dirs.mountpoint]];
    }
  }
}

/** Mount points listed in /proc/self/mountinfo, with the kernel's octal escapes (\040 for space) undone. */
export function liveMountpoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))));
}

export function isMounted(mountpoint: string): boolean {
  return liveMountpoints().includes(mountpoint);
}

/**
 * Mounts and unmounts through the real programs and remembers what is live.
 * Invariant: a mountpoint is in `live` from the moment its mount command starts until it is gone from
 * /proc/self/mountinfo, so an interruption at any point still unmounts it.
 */
export class MountTracker {
  private readonly live = new Set<string>();
  private readonly runner: CommandRunner;
  private readonly log: Logger;

  constructor(runner: CommandRunner, log: Logger) {
    this.runner = runner;
    this.log = log;
  }

  async mount(candidate: Candidate, dirs: OverlayDirs, strata: StrataLaunch): Promise<void> {
    const name = candidate.name;
    const [file, args] = mountCommand(candidate, dirs, strata);
    this.live.add(dirs.mountpoint);
    try {
      await this.runner.run(file, args);
    } catch (err) {
      throw new StrataError('STRATA_MOUNT_FAILED', `${name} did not mount ${dirs.mountpoint}: ${(err as Error).message}`, { cause: err });
    }
    // The helpers promise to exit only once the mount is live; check rather than trust it.
    if (!isMounted(dirs.mountpoint)) {
      throw new StrataError('STRATA_MOUNT_FAILED', `${name} exited 0 but ${dirs.mountpoint} is not mounted`);
    }
    this.log.debug({ implementation: name, mountpoint: dirs.mountpoint }, 'mounted');
  }

  async unmount(mountpoint: string): Promise<void> {
    // A FUSE server may still hold the mount briefly after the last reader closed; retry, then detach.
    for (let attempt = 0; attempt < 20 && isMounted(mountpoint); attempt++) {
      try {
        await this.runner.run('umount', [mountpoint]);
      } catch (err) {
        this.log.debug({ mountpoint, err: (err as Error).message }, 'umount failed, retrying');
        await sleep(100);
      }
    }
    if (isMounted(mountpoint)) {
      this.log.warn({ mountpoint }, 'mountpoint stayed busy; detaching it with umount -l');
      await this.runner.run('umount', ['-l', mountpoint]);
    }
    this.live.delete(mountpoint);
  }

  /** Unmounts everything still live; never throws, so it is safe in exit paths. */
  async unmountAll(): Promise<void> {
    for (const mountpoint of [...this.live].reverse()) {
      try {
        await this.unmount(mountpoint);
      } catch (err) {
        this.log.error({ mountpoint, err: (err as Error).message }, 'could not unmount');
      }
    }
  }
}

/** Checks that an implementation can be started here at all, with a one-line reason when it cannot. */
export function checkAvailable(kind: ImplementationKind, strataEntry: string): string | undefined {
  switch (kind) {
    case 'kernel':
      return readFileSync('/proc/filesystems', 'utf8').includes('\toverlay\n')
        ? undefined
        : 'the kernel has no overlay filesystem (try: modprobe overlay)';
    case 'fuse-overlayfs':
      return ['/usr/bin/fuse-overlayfs', '/bin/fuse-overlayfs', '/usr/local/bin/fuse-overlayfs'].some(existsSync)
        ? undefined
        : 'fuse-overlayfs is not installed (apt-get install fuse-overlayfs)';
    case 'strata':
      return existsSync(strataEntry) ? undefined : `${strataEntry} does not exist (run npm run build)`;
  }
}

/**
 * The process serving a FUSE mount: the one whose command line names the mountpoint (both fuse-overlayfs and
 * strata-overlay take it as an argument). Undefined for the kernel, which has no server.
 */
export function findServerPid(mountpoint: string): number | undefined {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').includes(mountpoint)) return Number(name);
    } catch {
      // The process ended while we looked.
    }
  }
  return undefined;
}

/** user + system CPU seconds a process (all its threads) has used so far; needs the clock tick, from getconf CLK_TCK. */
export function cpuSecondsOf(pid: number, clockTicksPerSecond: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name, which may itself hold spaces: state is [0], utime [11], stime [12].
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
  } catch {
    return undefined;
  }
}

/**
 * Peak resident set size (VmHWM, KiB) of a process so far, from /proc/PID/status; undefined once it is gone.
 * Read just after the timed command, while the server still runs: it covers the mount's whole life until then.
 */
export function peakRssKiB(pid: number): number | undefined {
  try {
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}
