/**
 * Is a mount's helper still answering? A probe asks the mount for something only the helper can answer: statfs(2)
 * of the mount root, which FUSE never serves from a cache (a stat could be answered from cached attributes).
 *
 * The probe runs in a child process (`stat -f`), never in the daemon: a request to a hung helper blocks the caller
 * until the connection is aborted, and a blocked libuv pool thread would be lost to the whole daemon. A request the
 * helper has not read yet is dropped when the child is killed at the deadline; one it read and never answered keeps
 * the child in uninterruptible sleep until the connection is aborted (`mount unmount --force`), so callers must not
 * start another probe while one is outstanding.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export type ProbeResult =
  | { state: 'ok' }
  /** Nothing answered within the deadline. */
  | { state: 'hung'; detail: string }
  /** The mount answered with an error (ENOTCONN, ECONNABORTED...): the helper is gone; supervision deals with that. */
  | { state: 'error'; detail: string };

export interface Probe {
  /** The verdict, at the deadline at the latest. */
  result: Promise<ProbeResult>;
  /** Resolves once the probe process is gone (never, while it is stuck in the kernel on a hung connection). */
  ended: Promise<void>;
}

export function probeMount(target: string, timeoutMs: number): Probe {
  let resolveResult!: (result: ProbeResult) => void;
  const result = new Promise<ProbeResult>((resolve) => { resolveResult = resolve; });
  let timer: NodeJS.Timeout | undefined;
  const ended = new Promise<void>((resolveEnded) => {
    const child = execFile('stat', ['--file-system', '--format=%T', '--', target], (err, _stdout, stderr) => {
      clearTimeout(timer);
      if (err === null) resolveResult({ state: 'ok' });
      else resolveResult({ state: 'error', detail: String(stderr).trim() || err.message });
      resolveEnded();
    });
    // The verdict does not wait for the child to die: one stuck in uninterruptible sleep never does.
    timer = setTimeout(() => {
      resolveResult({ state: 'hung', detail: `statfs of ${target} got no answer within ${timeoutMs} ms` });
      child.kill('SIGKILL');
    }, timeoutMs);
  });
  return { result, ended };
}

/** A word on why a helper may not answer, from its process state ("stopped (SIGSTOP?)", ...), or ''. */
export async function describeProcessState(pid: number | undefined): Promise<string> {
  if (pid === undefined) return '';
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'T' || state === 't') return `the helper (pid ${pid}) is stopped`;
    if (state === 'D') return `the helper (pid ${pid}) is blocked in the kernel`;
    if (state === 'Z') return `the helper (pid ${pid}) has exited`;
    return `the helper (pid ${pid}) is running but not answering`;
  } catch {
    return `the helper (pid ${pid}) is gone`;
  }
}
