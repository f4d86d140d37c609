/**
 * The control API client used by the CLI: HTTP/JSON over the daemon's Unix socket. Connection failures become
 * STRATA_DAEMON_UNREACHABLE with what to do; error replies become errors carrying the daemon's stable code.
 *
 * Every request has a deadline, so a hung daemon (stopped, or stuck) gives a clear error instead of a hang: the
 * kernel accepts connections on a listening socket even when nobody reads them. Requests that may run long on a
 * healthy daemon (image imports) pass timeoutMs 0; they are preceded by a ping under the normal deadline.
 */
import http from 'node:http';
import { STRATA_ERRORS, StrataError } from '../errors.js';

export const DEFAULT_SOCKET = '/run/strata/strata.sock';
/** The state dir a CLI command works on when no --root or STRATA_ROOT names one (the daemon's default too). */
export const DEFAULT_ROOT = '/var/lib/strata';
/** Default deadline of one request; STRATA_CLIENT_TIMEOUT (seconds) overrides it. */
export const DEFAULT_TIMEOUT_MS = 120_000;
/** Deadline of a ping (is a daemon there, and is it answering?). */
export const PING_TIMEOUT_MS = 10_000;

/** The deadline from STRATA_CLIENT_TIMEOUT (seconds, > 0), else the default. */
export function timeoutFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const seconds = Number(env.STRATA_CLIENT_TIMEOUT);
  return env.STRATA_CLIENT_TIMEOUT !== undefined && Number.isFinite(seconds) && seconds > 0 ? Math.round(seconds * 1000) : DEFAULT_TIMEOUT_MS;
}

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
  readonly timeoutMs: number;

  constructor(socketPath: string = DEFAULT_SOCKET, options: { timeoutMs?: number } = {}) {
    this.socketPath = socketPath;
    this.timeoutMs = options.timeoutMs ?? timeoutFromEnv();
  }

  /**
   * Sends one request; resolves with the parsed JSON body (or text) of a 2xx reply. `timeoutMs` (default: the
   * client's) bounds the whole exchange; 0 means none, after a ping that must answer within the client's deadline.
   */
  async request<T>(method: string, urlPath: string, body?: unknown, options: { timeoutMs?: number } = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    if (timeoutMs === 0) await this.ping();
    return this.send<T>(method, urlPath, body, timeoutMs);
  }

  private async ping(): Promise<void> {
    await this.send('GET', '/_ping', undefined, Math.min(this.timeoutMs, PING_TIMEOUT_MS));
  }

  private send<T>(method: string, urlPath: string, body: unknown, timeoutMs: number): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = <A extends unknown[]>(fn: (...args: A) => void) => (...args: A) => {
        clearTimeout(timer);
        fn(...args);
      };
      resolve = settle(resolve);
      reject = settle(reject);
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
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          reject(new StrataError('STRATA_DAEMON_UNREACHABLE', `the daemon on ${this.socketPath} did not answer ${method} ${urlPath} within ${timeoutMs / 1000} s: it may be stopped or hung (check \`systemctl status stratad\`, or its pid in <root>/stratad.pid); STRATA_CLIENT_TIMEOUT=<seconds> sets another deadline`));
          req.destroy();
        }, timeoutMs);
      }
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  /**
   * A request whose answer streams progress (the daemon's `?progress=true` form): newline-delimited JSON objects,
   * `{"Progress": …}` any number of times, then `{"Result": …}` or `{"Error": {message, code}}`.
   */
  requestWithProgress<T, P>(method: string, urlPath: string, body: unknown, onProgress: (progress: P) => void): Promise<T> {
    const payload = Buffer.from(JSON.stringify(body));
    // No deadline on the stream (an import may run long), after a ping that has one (see the header).
    return this.ping().then(() => new Promise<T>((resolve, reject) => {
      const req = http.request({
        socketPath: this.socketPath,
        method,
        path: `${urlPath}${urlPath.includes('?') ? '&' : '?'}progress=true`,
        headers: { 'content-type': 'application/json', 'content-length': payload.length },
      }, (res) => {
        if ((res.headers['content-type'] ?? '').includes('application/json')) {
          // Refused before streaming began (validation, unknown route): an ordinary error reply.
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            let parsed: { message?: string; code?: string } = {};
            try { parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof parsed; } catch { /* not JSON */ }
            reject(toClientError(parsed.code ?? 'STRATA_INTERNAL', parsed.message ?? `HTTP ${res.statusCode}`, res.statusCode ?? 0));
          });
          return;
        }
        let buffered = '';
        let settled = false;
        const handle = (line: string) => {
          if (line.trim() === '') return;
          const event = JSON.parse(line) as { Progress?: P; Result?: T; Error?: { message: string; code: string } };
          if (event.Progress !== undefined) onProgress(event.Progress);
          else if (event.Error !== undefined) { settled = true; reject(toClientError(event.Error.code, event.Error.message, 500)); }
          else if ('Result' in event) { settled = true; resolve(event.Result as T); }
        };
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buffered += chunk;
          let nl: number;
          while ((nl = buffered.indexOf('\n')) !== -1) {
            const line = buffered.slice(0, nl);
            buffered = buffered.slice(nl + 1);
            try { handle(line); } catch (err) { settled = true; reject(new StrataError('STRATA_INTERNAL', `the daemon sent malformed progress for ${method} ${urlPath}`, { cause: err })); }
          }
        });
        res.on('end', () => {
          if (buffered !== '') handle(buffered);
          if (!settled) reject(new StrataError('STRATA_INTERNAL', `the daemon ended ${method} ${urlPath} without a result`));
        });
        res.on('error', reject);
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.connectionError(err)));
      req.write(payload);
      req.end();
    }));
  }

  /**
   * True if a daemon answers on the socket, false if none is there (used to choose between the remote and local
   * backends). A daemon that is there but does not answer in time is an error: the local store is its, and locked.
   */
  async isReachable(): Promise<boolean> {
    try {
      await this.send('GET', '/_ping', undefined, Math.min(this.timeoutMs, PING_TIMEOUT_MS));
      return true;
    } catch (err) {
      if (err instanceof StrataError && /did not answer/.test(err.message)) throw err;
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

function toClientError(code: string, message: string, status: number): Error {
  return code in STRATA_ERRORS ? new StrataError(code as keyof typeof STRATA_ERRORS, message) : new RemoteError(code, message, status);
}
