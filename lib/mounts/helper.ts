/**
 * One mount-helper process (strata-overlay, or any program with fuse-overlayfs's command line) serving one mount.
 *
 * The helper runs in the foreground (`-f`) as our child so that we see it die, and so that its stderr flows into the
 * mount's logger. Invariant: `start()` resolves only once the kernel lists a FUSE mount at the target that was not
 * there before, and rejects (with the helper's last stderr lines) if the helper exits or times out first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError } from '../errors.js';
import type { Logger } from '../log.js';
import { forceDetach, mountAt } from './mountinfo.js';

export interface HelperSpec {
  /** The helper program: an executable, or a .js file run with this Node. */
  program: string;
  target: string;
  /** Top layer first, as in overlayfs's lowerdir. */
  lowerDirs: string[];
  upperDir: string;
  workDir: string;
  /** Let setuid/setgid bits and device nodes of the layers take effect (off: the mount is nosuid,nodev). */
  suid: boolean;
  dev: boolean;
  /** How long the clean-up `umount` of a helper that failed to start may take. */
  unmountTimeoutMs: number;
  /**
   * The mount's FUSE connection, when the helper is strata-overlay: the daemon's open /dev/fuse fd (the
   * helper gets it as fd 3 and serves it) and the node journal. The daemon's copy keeps the mount alive when
   * the helper dies, and a new helper given both resumes it (lib/fuse/kernel/journal.ts).
   */
  connection?: { deviceFd: number; journalPath: string };
}

export interface HelperExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const STDERR_TAIL_LINES = 20;
/** Where a helper finds the connection's /dev/fuse fd, and the pipe it reports readiness on (strata-overlay's STRATA_OVERLAY_READY_FD). */
const HELPER_DEVICE_FD = 3;
const HELPER_READY_FD = 4;
const READY_FD_ENV = 'STRATA_OVERLAY_READY_FD';
const READY_POLL_MS = 25;

export function helperArgv(spec: HelperSpec): { command: string; args: string[] } {
  const flags = `${spec.suid ? 'suid' : 'nosuid'},${spec.dev ? 'dev' : 'nodev'}`;
  let options = `lowerdir=${spec.lowerDirs.join(':')},upperdir=${spec.upperDir},workdir=${spec.workDir},${flags}`;
  if (spec.connection !== undefined) options += `,fuse_fd=${HELPER_DEVICE_FD},node_journal=${spec.connection.journalPath}`;
  const helperArgs = ['-f', '-o', options, spec.target];
  if (/\.[cm]?js$/.test(spec.program)) return { command: process.execPath, args: [spec.program, ...helperArgs] };
  return { command: spec.program, args: helperArgs };
}

export class HelperProcess {
  readonly spec: HelperSpec;
  private readonly logger: Logger;
  private child: ChildProcess | undefined;
  private readonly stderrTail: string[] = [];
  private exitResult: HelperExit | undefined;
  /** The mount's source once it is live (the helper's fsname). */
  private mountSource: string | undefined;
  private readonly exited: Promise<HelperExit>;
  private resolveExited!: (exit: HelperExit) => void;

  constructor(spec: HelperSpec, logger: Logger) {
    this.spec = spec;
    this.logger = logger;
    this.exited = new Promise((resolve) => { this.resolveExited = resolve; });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get hasExited(): boolean {
    return this.exitResult !== undefined;
  }

  /** Resolves when the helper process has exited, however it ended. */
  waitForExit(): Promise<HelperExit> {
    return this.exited;
  }

  /**
   * Starts the helper. With `resume`, the mount is live already (its connection outlived the previous helper):
   * the helper is ready once it says so on its ready pipe, and nothing at the target is ever removed on failure.
   */
  async start(timeoutMs: number, options: { resume?: boolean } = {}): Promise<void> {
    const resume = options.resume === true && this.spec.connection !== undefined;
    const before = await mountAt(this.spec.target);
    const { command, args } = helperArgv(this.spec);
    this.logger.debug({ command, args, resume }, 'starting mount helper');
    const connection = this.spec.connection;
    const child = connection === undefined
      ? spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      : spawn(command, args, {
        stdio: ['ignore', 'ignore', 'pipe', connection.deviceFd, 'pipe'],
        env: { ...process.env, [READY_FD_ENV]: String(HELPER_READY_FD) },
      });
    let readyText = '';
    (child.stdio[HELPER_READY_FD] as NodeJS.ReadableStream | null | undefined)?.on('data', (chunk: Buffer) => { readyText += chunk.toString(); });
    this.child = child;
    let spawnError: Error | undefined;
    child.on('error', (err) => { spawnError = err; });
    child.on('exit', (code, signal) => {
      this.exitResult = { code, signal };
      this.resolveExited(this.exitResult);
    });
    createInterface({ input: child.stderr! }).on('line', (line) => {
      this.stderrTail.push(line);
      if (this.stderrTail.length > STDERR_TAIL_LINES) this.stderrTail.shift();
      this.logger.warn({ helperPid: child.pid, stderr: line }, 'mount helper says');
    });

    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (spawnError !== undefined) {
        throw new StrataError('STRATA_MOUNT_FAILED', `cannot run the mount helper ${command}: ${spawnError.message} (check the mountProgram setting)`, { cause: spawnError });
      }
      if (this.exitResult !== undefined) {
        if (!resume) await this.removeOwnMount(before?.mountId);
        throw new StrataError('STRATA_MOUNT_FAILED', `mount helper exited (${describeExit(this.exitResult)}) before ${this.spec.target} was ${resume ? 'resumed' : 'mounted'}: ${this.stderrTail.join(' | ') || 'no output'}`);
      }
      if (resume) {
        if (readyText.includes('READY resumed')) {
          this.mountSource = before?.source;
          return;
        }
      } else {
        const now = await mountAt(this.spec.target);
        if (now !== undefined && now.fsType.startsWith('fuse') && now.mountId !== before?.mountId) {
          this.mountSource = now.source;
          return;
        }
      }
      if (Date.now() > deadline) {
        this.kill('SIGKILL');
        if (!resume) await this.removeOwnMount(before?.mountId);
        throw new StrataError('STRATA_MOUNT_FAILED', `mount helper did not mount ${this.spec.target} within ${timeoutMs} ms: ${this.stderrTail.join(' | ') || 'no output'}`);
      }
      await sleep(READY_POLL_MS);
    }
  }

  /** A helper that failed after all may have mounted something at the target: take it away, so a failure leaves nothing. */
  private async removeOwnMount(mountIdBefore: number | undefined): Promise<void> {
    const now = await mountAt(this.spec.target);
    if (now === undefined || !now.fsType.startsWith('fuse') || now.mountId === mountIdBefore) return;
    try {
      await forceDetach(this.spec.target, this.spec.unmountTimeoutMs);
      this.logger.warn({ target: this.spec.target }, 'removed the mount left by a helper that failed to start');
    } catch (err) {
      this.logger.error({ err, target: this.spec.target }, 'could not remove the mount left by a helper that failed to start');
    }
  }

  kill(signal: NodeJS.Signals): void {
    if (this.child !== undefined && this.exitResult === undefined) this.child.kill(signal);
  }

  /** Waits up to `ms` for the helper to exit on its own; true if it did. */
  async exitsWithin(ms: number): Promise<boolean> {
    if (this.exitResult !== undefined) return true;
    const timer = sleep(ms).then(() => false);
    return Promise.race([this.exited.then(() => true), timer]);
  }

  /**
   * The overlay options in effect, as strata-overlay shows them in its mount source ("strata-overlay:redirect_dir=on,...");
   * empty for a helper that does not (fuse-overlayfs).
   */
  get overlayOptions(): string {
    const prefix = 'strata-overlay:';
    return this.mountSource?.startsWith(prefix) ? this.mountSource.slice(prefix.length) : '';
  }

  lastStderr(): string {
    return this.stderrTail.join(' | ');
  }
}

export function describeExit(exit: HelperExit): string {
  return exit.signal !== null ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}
