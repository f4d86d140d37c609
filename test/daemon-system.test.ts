/**
 * stratad as a system service: the unit passes systemd-analyze verify, install.sh lays out the tree, readiness
 * reaches a real NOTIFY_SOCKET listener, one daemon per state dir, the socket refuses non-root users, malformed
 * API requests get 4xx JSON errors without hurting the daemon, and bad configuration stops it with one clear line.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { makeLayer, pingSocket, rawRequest, repoRoot, startDaemon, stagedExecStart, tempDir, waitFor } from './helpers/daemon-harness.js';

t.test('the unit file passes systemd-analyze verify and install.sh stages the service tree', async (t) => {
  const dir = tempDir(t, 'daemon-unit');
  const dest = path.join(dir, 'dest');
  const execStart = stagedExecStart(dest);
  t.equal(execStart[0], path.join(dest, 'usr/local/bin/stratad'), 'ExecStart runs the installed wrapper');
  t.equal(fs.statSync(path.join(dest, 'var/lib/strata')).mode & 0o777, 0o700, 'state dir is 0700');
  t.ok(fs.statSync(path.join(dest, 'run/strata')).isDirectory(), 'socket dir exists');
  t.equal(fs.statSync(execStart[0]!).mode & 0o111, 0o111, 'the wrapper is executable');
  t.equal(stagedExecStart(dest)[0], execStart[0], 'install.sh runs again cleanly');

  const unit = fs.readFileSync(path.join(repoRoot, 'daemon/systemd/stratad.service'), 'utf8');
  t.match(unit, /^Type=notify$/m);
  t.match(unit, /^KillMode=mixed$/m);
  // verify needs ExecStart's program to exist: point it at the staged wrapper, change nothing else.
  const staged = path.join(dir, 'stratad.service');
  fs.writeFileSync(staged, unit.replace(/^ExecStart=\/usr\/local\/bin\/stratad/m, `ExecStart=${execStart[0]}`));
  // The service requires its socket unit: verify both together, as they are installed.
  const socketUnit = fs.readFileSync(path.join(repoRoot, 'daemon/systemd/stratad.socket'), 'utf8');
  t.match(socketUnit, /^ListenStream=\/run\/strata\/strata\.sock$/m);
  t.match(socketUnit, /^SocketMode=0660$/m);
  fs.writeFileSync(path.join(dir, 'stratad.socket'), socketUnit);
  t.ok(fs.existsSync(path.join(dest, 'etc/systemd/system/stratad.socket')), 'install.sh installs the socket unit');
  const verify = spawnSync('systemd-analyze', ['verify', staged, path.join(dir, 'stratad.socket')], { encoding: 'utf8' });
  t.equal(verify.status, 0, 'systemd-analyze verify passes');
  t.equal(verify.stderr.trim(), '', 'without a single warning');
  fs.writeFileSync(path.join(dir, 'broken.service'), unit.replace('Type=notify', 'Type=notifyy').replace(/^ExecStart=\/usr\/local\/bin\/stratad/m, `ExecStart=${execStart[0]}`));
  t.match(spawnSync('systemd-analyze', ['verify', path.join(dir, 'broken.service')], { encoding: 'utf8' }).stderr, /Failed to parse service type/, 'verify does report a broken unit');
});

t.test('sd_notify readiness and stopping reach a real NOTIFY_SOCKET', async (t) => {
  const dir = tempDir(t, 'daemon-notify');
  const notifySocket = path.join(dir, 'notify.sock');
  // Node has no AF_UNIX datagram sockets; python3's socket module is the listener.
  const listener = spawn('python3', ['-u', '-c', [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    `s.bind(${JSON.stringify(notifySocket)})`,
    'print("BOUND", flush=True)',
    'while True:',
    '    print(repr(s.recv(4096).decode()), flush=True)',
  ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { listener.kill('SIGKILL'); });
  const messages: string[] = [];
  createInterface({ input: listener.stdout! }).on('line', (line) => messages.push(line));
  await waitFor('the notify listener', () => messages.includes('BOUND'));

  const daemon = await startDaemon(t, {
    root: path.join(dir, 'root'), socket: path.join(dir, 'strata.sock'),
    execStart: stagedExecStart(path.join(dir, 'install')), env: { NOTIFY_SOCKET: notifySocket },
  });
  const ready = await waitFor('READY=1', () => messages.find((m) => m.includes('READY=1')));
  t.match(ready, /STATUS=serving .*strata\.sock; 0 mount\(s\) live/, 'READY carries a STATUS');
  t.match(ready, new RegExp(`MAINPID=${daemon.pid}`), 'READY names the main pid');
  t.ok(messages.some((m) => m.includes('STATUS=reconciling mounts')), 'start-up progress is reported');
  t.ok(await pingSocket(daemon.socket), 'the API answers once READY is sent');
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });
  await waitFor('STOPPING=1', () => messages.find((m) => m.includes('STOPPING=1')));
  t.pass('STOPPING=1 was sent on SIGTERM');
});

t.test('one daemon per state dir; non-root users are refused; malformed requests get 4xx JSON', async (t) => {
  const dir = tempDir(t, 'daemon-guard');
  fs.chmodSync(dir, 0o755);
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const root = path.join(dir, 'root');
  const daemon = await startDaemon(t, { root, socket: path.join(dir, 'run/strata.sock'), execStart });

  const second = spawnSync(execStart[0]!, ['--root', root, '--socket', path.join(dir, 'other.sock')], { encoding: 'utf8' });
  t.equal(second.status, 1, 'a second daemon on the same root fails');
  t.match(second.stderr, new RegExp(`^stratad: STRATA_LOCKED: state dir ${root} is in use by another stratad \\(pid ${daemon.pid}\\)`), 'and says who holds it');
  t.equal(second.stderr.trim().split('\n').length, 1, 'in one line');
  const sameSocket = spawnSync(execStart[0]!, ['--root', path.join(dir, 'root2'), '--socket', daemon.socket], { encoding: 'utf8' });
  t.equal(sameSocket.status, 1);
  t.match(sameSocket.stderr, /STRATA_LOCKED: another daemon already serves .*strata\.sock/, 'a live socket is never stolen');
  t.ok(await pingSocket(daemon.socket), 'the first daemon still answers');

  const mode = fs.statSync(daemon.socket).mode & 0o777;
  t.equal(mode, 0o660, 'the socket is mode 0660');
  const nobody = daemon.cli(['info'], { uid: 65534 });
  t.equal(nobody.status, 1, 'nobody is refused');
  t.match(nobody.stderr, /STRATA_DAEMON_UNREACHABLE: permission denied on .*: run as root or as a member of the strata group/);
  t.equal(daemon.cli(['info']).status, 0, 'root is served');

  const badJson = await rawRequest(daemon.socket, 'POST', '/mounts/create', '{"Target": ', { 'content-type': 'application/json' });
  t.equal(badJson.status, 400, 'truncated JSON: 400');
  t.match(badJson.type, /application\/json/);
  t.equal(JSON.parse(badJson.body).code, 'STRATA_BAD_REQUEST');
  const missing = await rawRequest(daemon.socket, 'POST', '/mounts/create', '{"Sources": ["/"]}', { 'content-type': 'application/json' });
  t.equal(missing.status, 400);
  t.match(JSON.parse(missing.body), { code: 'STRATA_BAD_REQUEST', message: /Target/ }, 'names the missing field');
  const extra = await rawRequest(daemon.socket, 'POST', '/mounts/create', '{"Target": "/mnt", "Sources": ["/"], "Bogus": 1}', { 'content-type': 'application/json' });
  t.equal(extra.status, 400, 'unknown fields are refused, not ignored');
  const wrongType = await rawRequest(daemon.socket, 'POST', '/mounts/create', '{"Target": "/mnt", "Sources": "/"}', { 'content-type': 'application/json' });
  t.equal(wrongType.status, 400);
  const relative = await rawRequest(daemon.socket, 'POST', '/mounts/create', '{"Target": "mnt", "Sources": ["/"]}', { 'content-type': 'application/json' });
  t.match({ status: relative.status, body: JSON.parse(relative.body) }, { status: 400, body: { code: 'STRATA_BAD_DIR', message: /absolute/ } });
  const textBody = await rawRequest(daemon.socket, 'POST', '/mounts/create', '<mount/>', { 'content-type': 'application/xml' });
  t.equal(textBody.status, 415, 'a body that is not JSON: 415');
  t.equal(JSON.parse(textBody.body).code, 'STRATA_BAD_REQUEST');
  const badQuery = await rawRequest(daemon.socket, 'POST', '/mounts/x/stop?force=perhaps');
  t.equal(badQuery.status, 400);
  const noRoute = await rawRequest(daemon.socket, 'GET', '/containers/json');
  t.match({ status: noRoute.status, body: JSON.parse(noRoute.body) }, { status: 404, body: { code: 'STRATA_NOT_FOUND' } });
  const noMount = await rawRequest(daemon.socket, 'DELETE', '/mounts/ghost');
  t.match({ status: noMount.status, body: JSON.parse(noMount.body) }, { status: 404, body: { code: 'STRATA_NOT_FOUND', message: /ghost/ } });
  const nc = spawnSync('python3', ['-c', `import socket; s=socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(daemon.socket)}); s.sendall(b"\\x00\\xffGARBAGE\\r\\n\\r\\n"); print(s.recv(200)[:12])`], { encoding: 'utf8' });
  t.match(nc.stdout, /HTTP\/1\.1 400/, 'bytes that are not HTTP get 400');
  t.ok(await pingSocket(daemon.socket), 'the daemon is still up after all of that');
  t.equal(daemon.json<unknown[]>(['mount', 'ls']).length, 0, 'and nothing was created');
  t.same(await daemon.kill('SIGTERM'), { code: 0, signal: null });
});

t.test('bad configuration stops the daemon with one clear line; a bad helper fails the create and leaves nothing', async (t) => {
  const dir = tempDir(t, 'daemon-config');
  const execStart = stagedExecStart(path.join(dir, 'install'));
  const start = (args: string[]) => spawnSync(execStart[0]!, ['--root', path.join(dir, 'root'), '--socket', path.join(dir, 's.sock'), ...args], { encoding: 'utf8' });
  const cases: [string, string[], RegExp][] = [
    ['unknown flag', ['--bogus'], /STRATA_BAD_OPTION: Unknown argument: bogus/],
    ['bad log level', ['--log-level', 'loud'], /STRATA_BAD_OPTION: --log-level: logLevel must be one of/],
    ['missing config file', ['--config', path.join(dir, 'none.json')], /STRATA_BAD_OPTION: config file .*none\.json does not exist/],
  ];
  fs.writeFileSync(path.join(dir, 'unknown.json'), JSON.stringify({ rooot: '/x' }));
  cases.push(['unknown setting in file', ['--config', path.join(dir, 'unknown.json')], /unknown setting "rooot"/]);
  fs.writeFileSync(path.join(dir, 'relative.json'), JSON.stringify({ root: 'var/lib' }));
  cases.push(['relative path in file', ['--config', path.join(dir, 'relative.json')], /root must be an absolute path, got "var\/lib"/]);
  fs.writeFileSync(path.join(dir, 'broken.json'), '{ "root": ');
  cases.push(['broken JSON', ['--config', path.join(dir, 'broken.json')], /config file .*broken\.json is not readable JSON/]);
  for (const [what, args, pattern] of cases) {
    const r = start(args);
    t.equal(r.status, 2, `${what}: exit 2`);
    t.match(r.stderr, pattern, `${what}: names the problem`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
  }
  t.notOk(fs.existsSync(path.join(dir, 'root')), 'nothing was created by a refused start');

  // Flags override the file, which overrides the defaults.
  fs.writeFileSync(path.join(dir, 'stratad.json'), JSON.stringify({ socketGroup: 'filegroup', helperExitGraceMs: 1234 }));
  const daemon = await startDaemon(t, { root: path.join(dir, 'root'), socket: path.join(dir, 's.sock'), execStart, extraArgs: ['--config', path.join(dir, 'stratad.json'), '--socket-group', 'flaggroup'] });
  const info = daemon.json<{ SocketGroup: string; HelperExitGraceMs: number }>(['info']);
  t.equal(info.SocketGroup, 'flaggroup', 'a flag beats the file');
  t.equal(info.HelperExitGraceMs, 1234, 'the file beats the default');
  await daemon.kill('SIGTERM');

  const broken = await startDaemon(t, {
    root: path.join(dir, 'root'), socket: path.join(dir, 's.sock'), execStart,
    extraArgs: ['--mount-program', path.join(dir, 'no-such-helper')],
  });
  const lower = makeLayer(path.join(dir, 'lower'), { f: 'x' });
  fs.mkdirSync(path.join(dir, 'mnt'));
  const r = broken.cli(['mount', 'create', lower, '--target', path.join(dir, 'mnt')]);
  t.equal(r.status, 1);
  t.match(r.stderr, /STRATA_MOUNT_FAILED: cannot run the mount helper .*no-such-helper.*check the mountProgram setting/);
  t.equal(broken.json<unknown[]>(['mount', 'ls']).length, 0, 'the failed create left no record');
  t.same(fs.readdirSync(path.join(dir, 'root/mounts')), [], 'and no dirs');
  await broken.kill('SIGTERM');
});
