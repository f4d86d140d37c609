/**
 * sd_notify(3) without libsystemd: one datagram per message to $NOTIFY_SOCKET. Node has no AF_UNIX datagram
 * sockets, so the `unix-dgram` addon sends them. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
 */
import { createRequire } from 'node:module';
import type { Logger } from '../lib/log.js';

interface UnixDgramSocket {
  on(event: 'error', listener: (err: Error) => void): void;
  send(buf: Buffer, offset: number, length: number, path: string, callback?: (err?: Error) => void): void;
  close(): void;
}
interface UnixDgramModule {
  createSocket(type: 'unix_dgram'): UnixDgramSocket;
}

const require = createRequire(import.meta.url);

export class SystemdNotifier {
  private readonly socketPath: string | undefined;
  private readonly logger: Logger;

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

  /** Sends one message ("READY=1\nSTATUS=..."). Failures are logged, never thrown: systemd readiness is advisory. */
  async notify(fields: Record<string, string | number>): Promise<void> {
    if (this.socketPath === undefined) return;
    const message = Buffer.from(Object.entries(fields).map(([k, v]) => `${k}=${v}`).join('\n'));
    const dgram = require('unix-dgram') as UnixDgramModule;
    const socket = dgram.createSocket('unix_dgram');
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

  stopping(status: string): Promise<void> {
    return this.notify({ STOPPING: 1, STATUS: status });
  }
}
