/**
 * The control API client used by the CLI: HTTP/JSON over the daemon's Unix socket. Connection failures become
 * STRATA_DAEMON_UNREACHABLE with what to do; error replies become errors carrying the daemon's stable code.
 */
import http from 'node:http';
import { STRATA_ERRORS, StrataError } from '../errors.js';

export const DEFAULT_SOCKET = '/run/strata/strata.sock';

/** An error reported by the daemon whose code is not in the STRATA_* table (an errno name such as EACCES). */
export class RemoteError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(code: string, message: string, status: number) {
    super(message);
    this.name = 'RemoteError';
    this.code = code;
    this.status = status;
  }
}

export class StrataClient {
  readonly socketPath: string;

  constructor(socketPath: string = DEFAULT_SOCKET) {
    this.socketPath = socketPath;
  }

  /** Sends one request; resolves with the parsed JSON body (or text) of a 2xx reply. */
  request<T>(method: string, urlPath: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = http.request({
        socketPath: this.socketPath,
        method,
        path: urlPath,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': payload.length },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const isJson = (res.headers['content-type'] ?? '').includes('json');
          let parsed: unknown = text;
          if (isJson && text !== '') {
            try {
              parsed = JSON.parse(text);
            } catch (err) {
              reject(new StrataError('STRATA_INTERNAL', `the daemon sent malformed JSON for ${method} ${urlPath}`, { cause: err }));
              return;
            }
          }
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) {
            resolve(parsed as T);
            return;
          }
          const errorBody = (typeof parsed === 'object' && parsed !== null ? parsed : { message: text }) as { message?: string; code?: string };
          const code = errorBody.code ?? 'STRATA_INTERNAL';
          const message = errorBody.message ?? `HTTP ${status}`;
          reject(code in STRATA_ERRORS ? new StrataError(code as keyof typeof STRATA_ERRORS, message) : new RemoteError(code, message, status));
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.connectionError(err)));
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  /** True if a daemon answers on the socket (used to choose between the remote and local backends). */
  async isReachable(): Promise<boolean> {
    try {
      await this.request('GET', '/_ping');
      return true;
    } catch {
      return false;
    }
  }

  private connectionError(err: NodeJS.ErrnoException): Error {
    if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
      return new StrataError('STRATA_DAEMON_UNREACHABLE', `daemon not running (nothing answers on ${this.socketPath}): start it with \`systemctl start stratad\` or \`stratad --socket ${this.socketPath}\``, { cause: err });
    }
    if (err.code === 'EACCES' || err.code === 'EPERM') {
      return new StrataError('STRATA_DAEMON_UNREACHABLE', `permission denied on ${this.socketPath}: run as root or as a member of the strata group`, { cause: err });
    }
    return new StrataError('STRATA_DAEMON_UNREACHABLE', `cannot reach the daemon on ${this.socketPath}: ${err.message}`, { cause: err });
  }
}
