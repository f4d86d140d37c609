/**
 * Registries for tests, on 127.0.0.1 only:
 *  - RealRegistry: Debian's `docker-registry` (distribution 2.8) with a config written here, storage in a temp dir,
 *    optionally htpasswd auth; started, killed and restarted by the test, always stopped in teardown;
 *  - CountingProxy: a loopback HTTP proxy in front of it that counts blob bytes served and can cut a transfer
 *    after N bytes (to kill the registry mid-pull);
 *  - a free-port finder.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

interface TeardownHost { teardown(fn: () => void | Promise<void>): void }

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

async function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/v2/' }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 || res.statusCode === 401);
    });
    req.on('error', () => resolve(false));
    req.setTimeout(1000, () => req.destroy());
  });
}

export class RealRegistry {
  readonly dir: string;
  readonly logFile: string;
  port = 0;
  private child: ChildProcess | null = null;

  constructor(t: TeardownHost, dir: string, private readonly auth?: { user: string; password: string }) {
    this.dir = dir;
    this.logFile = path.join(dir, 'registry.log');
    fs.mkdirSync(path.join(dir, 'storage'), { recursive: true });
    t.teardown(() => this.stop());
  }

  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    if (this.port === 0) this.port = await freePort();
    const lines = [
      'version: 0.1',
      'log:', '  level: info', '  accesslog:', '    disabled: false',
      'storage:', '  filesystem:', `    rootdirectory: ${path.join(this.dir, 'storage')}`, '  delete:', '    enabled: true',
      'http:', `  addr: 127.0.0.1:${this.port}`,
    ];
    if (this.auth) {
      const htpasswd = path.join(this.dir, 'htpasswd');
      const r = spawnSync('htpasswd', ['-Bbn', this.auth.user, this.auth.password], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`htpasswd failed: ${r.stderr}`);
      fs.writeFileSync(htpasswd, r.stdout);
      lines.push('auth:', '  htpasswd:', '    realm: strata-test', `    path: ${htpasswd}`);
    }
    fs.writeFileSync(path.join(this.dir, 'config.yml'), `${lines.join('\n')}\n`);
    const log = fs.openSync(this.logFile, 'a');
    this.child = spawn('docker-registry', ['serve', path.join(this.dir, 'config.yml')], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    for (let i = 0; i < 100; i += 1) {
      if (await answers(this.port)) return;
      if (this.child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`docker-registry did not come up on ${this.host}: ${fs.readFileSync(this.logFile, 'utf8').slice(-2000)}`);
  }

  /** SIGKILL, as a crash would. */
  async kill(): Promise<void> {
    const child = this.child;
    if (child === null || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    this.child = null;
  }

  async stop(): Promise<void> {
    await this.kill();
  }

  /** Request lines of the access log, e.g. to count `GET /v2/…/blobs/` requests. */
  accessLog(): string[] {
    return fs.readFileSync(this.logFile, 'utf8').split('\n').filter((l) => /^127\.0\.0\.1 - /.test(l));
  }
}

/**
 * Forwards everything to `target`. Counts response body bytes of blob GETs, and records Range headers.
 * `cutAfter(n)` makes it stop forwarding blob bytes once n have passed and resolve the returned promise;
 * `dropConnections()` then closes every client connection.
 */
export class CountingProxy {
  port = 0;
  blobBytes = 0;
  ranges: string[] = [];
  private server: http.Server;
  private limit = Infinity;
  private reached: (() => void) | null = null;
  private readonly sockets = new Set<net.Socket>();

  constructor(t: TeardownHost, private readonly target: () => number) {
    this.server = http.createServer((req, res) => this.forward(req, res));
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    t.teardown(() => this.close());
  }

  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.port = await freePort();
    await new Promise<void>((resolve) => this.server.listen(this.port, '127.0.0.1', resolve));
  }

  reset(): void {
    this.blobBytes = 0;
    this.ranges = [];
    this.limit = Infinity;
    this.reached = null;
  }

  cutAfter(bytes: number): Promise<void> {
    this.limit = bytes;
    return new Promise((resolve) => { this.reached = resolve; });
  }

  dropConnections(): void {
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private forward(req: http.IncomingMessage, res: http.ServerResponse): void {
    const isBlobGet = req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '');
    if (isBlobGet && typeof req.headers.range === 'string') this.ranges.push(req.headers.range);
    const upstream = http.request({ host: '127.0.0.1', port: this.target(), method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.on('data', (chunk: Buffer) => {
        if (!isBlobGet) { res.write(chunk); return; }
        if (this.blobBytes >= this.limit) return;
        const room = this.limit - this.blobBytes;
        const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
        this.blobBytes += part.length;
        res.write(part);
        if (this.blobBytes >= this.limit && this.reached !== null) {
          const done = this.reached;
          this.reached = null;
          up.pause();
          done();
        }
      });
      up.on('end', () => { if (this.blobBytes < this.limit || !isBlobGet) res.end(); });
      up.on('error', () => res.destroy());
    });
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    req.pipe(upstream);
  }
}
