/**
 * sd_notify(3) without libsystemd: one datagram per message to $NOTIFY_SOCKET. Node has no AF_UNIX datagram
 * sockets, so the `unix-dgram` addon sends them. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
 */
import { createRequire } from 'node:module';
import type { Logger } from '../lib/log.js';

export interface UnixDgramSocket {
  on(event: 'error', listener: (err: Error) => void): void;
  send(buf: Buffer, offset: number, length: number, path: string, callback?: (err?: Error) => void): void;
  close(): void;
}
interface UnixDgramModule {
  createSocket(type: 'unix_dgram'): UnixDgramSocket;
}

const require = createRequire(import.meta.url);

/** A fresh datagram socket from the `unix-dgram` addon (loaded on first use: outside systemd it is never needed). */
export function unixDgramSocket(): UnixDgramSocket {
  return (require('unix-dgram') as UnixDgramModule).createSocket('unix_dgram');
}

/** CLOCK_MONOTONIC in microseconds, as systemd wants it with RELOADING=1 (libuv's hrtime is CLOCK_MONOTONIC). */
export function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/**
 * The watchdog interval systemd asks for, in ms, or undefined when there is none for this process:
 * WATCHDOG_USEC set, and WATCHDOG_PID (if set) naming us, as sd_watchdog_enabled(3) decides.
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid = process.pid): number | undefined {
  const usec = Number.parseInt(env.WATCHDOG_USEC ?? '', 10);
  if (!Number.isFinite(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== '' && Number.parseInt(env.WATCHDOG_PID, 10) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 1000));
}

export class SystemdNotifier {
  private readonly socketPath: string | undefined;
  private readonly logger: Logger;
  private lastStatus: string | undefined;

  constructor(notifySocket: string | undefined, logger: Logger) {
    this.logger = logger.child({ component: 'sd-notify' });
    if (notifySocket !== undefined && notifySocket.startsWith('@')) {
      // unix-dgram cannot address the abstract namespace; systemd itself always passes a path.
      this.logger.warn({ notifySocket }, 'abstract NOTIFY_SOCKET is not supported; readiness will not be reported');
      this.socketPath = undefined;
    } else {
      this.socketPath = notifySocket === '' ? undefined : notifySocket;
    }
  }

  /** True when systemd listens: the other calls are no-ops otherwise. */
  get enabled(): boolean {
    return this.socketPath !== undefined;
  }

  /** Sends one message ("READY=1\nSTATUS=..."). Failures are logged, never thrown: systemd readiness is advisory. */
  async notify(fields: Record<string, string | number | bigint>): Promise<void> {
    if (this.socketPath === undefined) return;
    if (fields.STATUS !== undefined) this.lastStatus = String(fields.STATUS);
    const message = Buffer.from(Object.entries(fields).map(([k, v]) => `${k}=${v}`).join('\n'));
    const socket = unixDgramSocket();
    await new Promise<void>((resolve) => {
      socket.on('error', (err) => {
        this.logger.warn({ err, notifySocket: this.socketPath }, 'sd_notify failed');
        resolve();
      });
      socket.send(message, 0, message.length, this.socketPath!, (err) => {
        if (err) this.logger.warn({ err, notifySocket: this.socketPath }, 'sd_notify failed');
        resolve();
      });
    });
    socket.close();
  }

  ready(status: string): Promise<void> {
    return this.notify({ READY: 1, STATUS: status, MAINPID: process.pid });
  }

  status(status: string): Promise<void> {
    return this.notify({ STATUS: status });
  }

  /** Sends STATUS only when it differs from the last one sent, so periodic refreshes cost nothing. */
  statusIfChanged(status: string): Promise<void> {
    return status === this.lastStatus ? Promise.resolve() : this.status(status);
  }

  stopping(status: string): Promise<void> {
    return this.notify({ STOPPING: 1, STATUS: status });
  }

  /** Starts a reload: systemd (Type=notify-reload semantics, honoured by 252 for Type=notify too) waits for READY=1. */
  reloading(status: string): Promise<void> {
    return this.notify({ RELOADING: 1, MONOTONIC_USEC: monotonicUsec(), STATUS: status });
  }

  /** Ends a reload. */
  reloaded(status: string): Promise<void> {
    return this.notify({ READY: 1, STATUS: status });
  }

  watchdog(): Promise<void> {
    return this.notify({ WATCHDOG: 1 });
  }
}
