/**
 * The strata_fetch addon (native/strata_fetch.c) against its contract in lib/native/fetch.ts, with real HTTP and
 * HTTPS servers in this process (the download runs on its own thread, so they can answer): digests over held and
 * new bytes, Range, what a file already holds, a stop, errors of the network, of the file and of the answer, and
 * TLS with a CA of our own.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { fetchToFile, type FetchRequest } from '../lib/native/fetch.js';
import { freePort } from './helpers/registry.js';
import { tempDir } from './helpers/daemon-harness.js';

const blob = randomBytes(3 << 20);
const blobHex = createHash('sha256').update(blob).digest('hex');

interface Seen { ranges: Array<string | undefined>; requests: number }

/** Serves `blob` at /blob (honouring `bytes=N-`), /stall (1 KiB, then nothing), /missing (404 with a JSON body). */
function handler(seen: Seen): http.RequestListener {
  return (req, res) => {
    seen.requests += 1;
    seen.ranges.push(req.headers.range);
    if (req.url === '/blob') {
      const from = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      if (from === null) return void res.writeHead(200, { 'content-length': blob.length }).end(blob);
      const start = Number(from[1]);
      return void res.writeHead(206, { 'content-length': blob.length - start, 'content-range': `bytes ${start}-${blob.length - 1}/${blob.length}` }).end(blob.subarray(start));
    }
    if (req.url === '/stall') {
      res.writeHead(200, { 'content-length': blob.length });
      return void res.write(blob.subarray(0, 1024));
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}');
  };
}

async function listen(t: Test, server: http.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }));
  return (server.address() as AddressInfo).port;
}

function request(url: string, file: string, extra: Partial<FetchRequest> = {}): FetchRequest {
  return { url, headers: ['User-Agent: strata-test'], file, size: blob.length, timeoutSeconds: 10, progress: new Float64Array(2), ...extra };
}

t.test('downloads, resumes with Range, and hashes every byte the file holds', async (t) => {
  const dir = tempDir(t, 'fetch');
  const seen: Seen = { ranges: [], requests: 0 };
  const port = await listen(t, http.createServer(handler(seen)));
  const url = `http://127.0.0.1:${port}/blob`;

  const fresh = request(url, path.join(dir, 'fresh'));
  const r = await fetchToFile(fresh);
  t.match(r, { status: 200, held: blob.length, transferred: blob.length, digest: blobHex, curlCode: 0, stop: null }, 'a whole download');
  t.equal(fresh.progress[0], blob.length, 'progress[0] ends at the size');
  t.ok(fs.readFileSync(fresh.file).equals(blob), 'the file is the blob');
  t.equal(fs.statSync(fresh.file).mode & 0o777, 0o600, 'created 0600');
  t.match(r.headers, /^HTTP\/1\.1 200 OK\r\n/, 'the status line and headers come back');

  const part = path.join(dir, 'part');
  fs.writeFileSync(part, blob.subarray(0, 1_000_000));
  const resumed = await fetchToFile(request(url, part));
  t.equal(seen.ranges.at(-1), 'bytes=1000000-', 'only the rest is asked for');
  t.match(resumed, { status: 206, held: blob.length, transferred: blob.length - 1_000_000, digest: blobHex }, 'and the digest covers the held bytes too');

  const requestsBefore = seen.requests;
  const again = await fetchToFile(request(url, part));
  t.match(again, { status: 0, held: blob.length, transferred: 0, digest: blobHex }, 'a file that holds the whole blob needs no request');
  t.equal(seen.requests, requestsBefore, 'and none is made');

  const long = path.join(dir, 'long');
  fs.writeFileSync(long, Buffer.alloc(blob.length + 10, 1));
  t.match(await fetchToFile(request(url, long)), { status: 200, held: blob.length, digest: blobHex }, 'a file longer than the blob is emptied and fetched again');

  const wrong = path.join(dir, 'wrong');
  fs.writeFileSync(wrong, Buffer.alloc(100, 1));
  const mixed = await fetchToFile(request(url, wrong));
  t.equal(mixed.held, blob.length, 'held bytes that are not the blob still count');
  t.not(mixed.digest, blobHex, 'so the digest shows it');
});

t.test('answers, stops and failures', async (t) => {
  const dir = tempDir(t, 'fetch-errors');
  const seen: Seen = { ranges: [], requests: 0 };
  const port = await listen(t, http.createServer(handler(seen)));

  const missing = await fetchToFile(request(`http://127.0.0.1:${port}/missing`, path.join(dir, 'missing')));
  t.match(missing, { status: 404, held: 0, digest: null, stop: null, errorBody: '{"errors":[{"code":"BLOB_UNKNOWN"}]}' }, 'an error answer: its status and body');
  t.match(missing.headers, /^HTTP\/1\.1 404 Not Found\r\n.*content-type: application\/json/is, 'and its headers');
  t.equal(fs.statSync(path.join(dir, 'missing')).size, 0, 'the body of an error is not written to the file');

  const tooSmall = await fetchToFile(request(`http://127.0.0.1:${port}/blob`, path.join(dir, 'small'), { size: 1000 }));
  t.match(tooSmall, { stop: 'overflow', digest: null }, 'a body longer than the size stops the transfer');
  t.ok(fs.statSync(path.join(dir, 'small')).size <= 1000, 'and the file never holds more than the size');

  const stalled = request(`http://127.0.0.1:${port}/stall`, path.join(dir, 'stall'));
  const running = fetchToFile(stalled);
  await new Promise((resolve) => setTimeout(resolve, 300));
  stalled.progress[1] = 1;
  const stopped = await running;
  t.match(stopped, { stop: 'aborted', held: 1024, digest: null }, 'progress[1] = 1 stops a stalled transfer, keeping what arrived');

  const closed = await freePort();
  const unreachable = await fetchToFile(request(`http://127.0.0.1:${closed}/blob`, path.join(dir, 'unreachable')));
  t.match(unreachable, { status: 0, curlCode: 7, curlError: /connect/i }, 'a closed port: COULDNT_CONNECT, with libcurl\'s message');

  const noDir = await fetchToFile(request(`http://127.0.0.1:${port}/blob`, path.join(dir, 'no', 'such', 'dir')));
  t.match(noDir, { stop: 'file', syscall: 'open', code: 'ENOENT' }, 'a file that cannot be created: the errno and the call');

  await t.rejects(fetchToFile({ url: 1 } as unknown as FetchRequest), { name: 'TypeError', message: /request needs url/ }, 'a malformed request is a TypeError');
  const ftp = await fetchToFile(request('ftp://127.0.0.1/blob', path.join(dir, 'ftp')));
  t.match(ftp, { status: 0, curlCode: 1 }, 'only http and https are spoken (CURLE_UNSUPPORTED_PROTOCOL)');
});

t.test('HTTPS: trusts the system CAs plus caFile, and nothing else', async (t) => {
  const dir = tempDir(t, 'fetch-tls');
  const openssl = (...args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=strata test CA');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext');
  const seen: Seen = { ranges: [], requests: 0 };
  const server = https.createServer({ key: fs.readFileSync(path.join(dir, 'server.key')), cert: fs.readFileSync(path.join(dir, 'server.pem')) }, handler(seen));
  const port = await listen(t, server);
  const url = `https://127.0.0.1:${port}/blob`;

  const trusted = await fetchToFile(request(url, path.join(dir, 'trusted'), { caFile: path.join(dir, 'ca.pem') }));
  t.match(trusted, { status: 200, held: blob.length, digest: blobHex, curlCode: 0 }, 'with the CA in caFile, the blob arrives over TLS');
  const untrusted = await fetchToFile(request(url, path.join(dir, 'untrusted')));
  t.match(untrusted, { status: 0, held: 0, curlCode: 60, curlError: /certificate|verif/i }, 'without it, the certificate is refused (PEER_FAILED_VERIFICATION)');
});
