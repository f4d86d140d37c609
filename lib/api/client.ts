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

  /**
   * A request whose answer streams progress (the daemon's `?progress=true` form): newline-delimited JSON objects,
   * `{"Progress": …}` any number of times, then `{"Result": …}` or `{"Error": {message, code}}`.
   */
  requestWithProgress<T, P>(method: string, urlPath: string, body: unknown, onProgress: (progress: P) => void): Promise<T> {
    const payload = Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
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

function toClientError(code: string, message: string, status: number): Error {
  return code in STRATA_ERRORS ? new StrataError(code as keyof typeof STRATA_ERRORS, message) : new RemoteError(code, message, status);
}
