/**
 * Running the real tools (mount, dd, tar, find, xargs, rm) the way a user would, and timing them.
 *
 * A CommandRunner remembers the children it started so that an interrupted benchmark can end them
 * before it unmounts: a `tar` still reading a mountpoint would keep the unmount busy.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from '../../lib/log.js';

export interface CommandResult {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Wall-clock seconds from spawn to exit. */
  readonly seconds: number;
}

export class CommandError extends Error {
  readonly result: CommandResult;
  readonly command: string;
  constructor(command: string, result: CommandResult) {
    const why = result.signal ? `killed by ${result.signal}` : `exited ${result.exitCode}`;
    const detail = firstLine(result.stderr) || firstLine(result.stdout);
    super(`${command} ${why}${detail ? `: ${detail}` : ''}`);
    this.name = 'CommandError';
    this.result = result;
    this.command = command;
  }
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] ?? '';
}

/** Single-quotes a string for bash, so paths with spaces or quotes survive a pipeline. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** Output past this many characters is dropped: dd and find can print a lot, and only the tail matters. */
const MAX_CAPTURE = 64 * 1024;

export class CommandRunner {
  private readonly children = new Set<ChildProcess>();
  private readonly log: Logger;

  constructor(log: Logger) {
    this.log = log;
  }

  /** Runs a program with arguments (no shell); rejects with CommandError on a non-zero exit. */
  async run(file: string, args: readonly string[], options: { cwd?: string } = {}): Promise<CommandResult> {
    const result = await this.spawnTimed(file, args, options.cwd);
    if (result.exitCode !== 0) throw new CommandError([file, ...args].join(' '), result);
    return result;
  }

  /** Runs a bash pipeline with pipefail, so a failing `tar` in `tar | wc` is not hidden by `wc`. */
  async bash(script: string, options: { cwd?: string } = {}): Promise<CommandResult> {
    const result = await this.spawnTimed('bash', ['-o', 'pipefail', '-c', script], options.cwd);
    if (result.exitCode !== 0) throw new CommandError(script, result);
    return result;
  }

  /** Ends every child still running (the benchmark was interrupted). */
  killAll(): void {
    for (const child of this.children) {
      // A pipeline's children share bash's process group only with job control; kill bash's group when we made one.
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }
  }

  private spawnTimed(file: string, args: readonly string[], cwd: string | undefined): Promise<CommandResult> {
    this.log.debug({ file, args, cwd }, 'spawn');
    return new Promise((resolve, reject) => {
      const started = process.hrtime.bigint();
      // detached puts the child in its own process group, which killAll() ends as a whole.
      const child = spawn(file, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      this.children.add(child);
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        stdout = (stdout + chunk).slice(-MAX_CAPTURE);
      });
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-MAX_CAPTURE);
      });
      child.on('error', (err) => {
        this.children.delete(child);
        reject(err);
      });
      child.on('close', (exitCode, signal) => {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        this.children.delete(child);
        resolve({ exitCode, signal, stdout, stderr, seconds });
      });
    });
  }
}
