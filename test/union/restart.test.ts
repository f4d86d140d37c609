/**
 * A FUSE server that dies does not take its mount with it (issue 13, "Restartable"): whoever holds a duplicate of
 * the connection's /dev/fuse fd (the daemon; here the test) starts a new strata-overlay with that fd and the node
 * journal, and the new server resumes the connection: the kernel's node ids and handles stay valid, requests the
 * dead server had read are sent again (FUSE_NOTIFY_RESEND), and the processes using the mount only wait.
 *
 * The journal itself is checked first without a mount: a node table driven by random calls, then rebuilt from its
 * journal, must come back identical, across compactions and a torn last record.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { isMounted, requireCandidate, run, Sandbox, strataOverlayJs } from '../helpers/sandbox.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';
import { NodeTable, type KernelNode } from '../../lib/fuse/kernel/nodes.js';
import { NodeJournal } from '../../lib/fuse/kernel/journal.js';
import { prng } from '../helpers/random.js';
import { FUSECTL_DIR, fuseConnectionId, readMountTableSync } from '../../lib/mounts/mountinfo.js';

requireCandidate('strata');

/** Everything about a table that the kernel could observe: ids, inode numbers, types, counts and names. */
function describe(table: NodeTable): string[] {
  const out: string[] = [];
  for (const node of table.allNodes()) {
    const names = node.aliases.map((a) => `${a.parent.id}/${a.name}`).join(',');
    out.push(`${node.id} ino=${node.ino} type=${node.type} n=${node.nlookup} [${names}]`);
  }
  return out.sort();
}

// retainLimit > 0: with export support (nfs_export=on) forgotten nodes are retained and revived by id (nodes.ts).
for (const retainLimit of [0, 300]) t.test(`the node journal rebuilds the same table, across compactions (retained forgotten nodes: ${retainLimit})`, async (t) => {
  const box = await Sandbox.create(t, 'node-journal');
  const file = path.join(box.dir('journal'), 'nodes');
  const rand = prng(1313);
  const rng = { int: (n: number) => Math.floor(rand() * n) };
  const journal = NodeJournal.open(file);
  journal.initialized({ minor: 40, passthrough: true, noOpendir: true, exportSupport: retainLimit > 0 }, 7);
  const table = new NodeTable(7, 0o040000, retainLimit);
  journal.attach(table);
  const dirs: KernelNode[] = [table.root];
  const names = ['a', 'b', 'c', 'd', 'e', 'ü', 'long-'.repeat(40)];
  let files = 0;
  for (let i = 0; i < 60_000; i++) {
    // The kernel never names a node it has forgotten: neither does this driver.
    for (let k = dirs.length - 1; k > 0; k--) if (table.get(dirs[k]!.id) !== dirs[k]) dirs.splice(k, 1);
    const parent = dirs[rng.int(dirs.length)]!;
    const name = names[rng.int(names.length)]! + rng.int(50);
    const roll = rng.int(100);
    if (roll < 45) {
      const isDir = rng.int(4) === 0;
      // Inode numbers repeat now and then: hard links share a node.
      const node = table.lookedUp(parent, name, isDir ? 1_000_000 + i : 10 + rng.int(3000), isDir ? 0o040000 : 0o100000);
      if (isDir && !dirs.includes(node)) dirs.push(node);
      files += 1;
    } else if (roll < 60) {
      table.removeAlias(parent, name);
    } else if (retainLimit > 0 && roll < 66) {
      // LOOKUP "." / "..": a node asked for by id, live or retained (revived).
      const known = [...table.allNodes()];
      table.lookedUpNode(known[rng.int(known.length)]!);
    } else if (roll < 72) {
      const to = dirs[rng.int(dirs.length)]!;
      if (rng.int(5) === 0) table.exchanged(parent, name, to, names[rng.int(names.length)]! + rng.int(50));
      else table.renamed(parent, name, to, names[rng.int(names.length)]! + rng.int(50));
    } else {
      const ids = [...table.allNodes()].map((n) => n.id);
      const id = ids[rng.int(ids.length)]!;
      table.forget(id, 1 + rng.int(2));
    }
  }
  t.ok(files > 20_000, 'the run made many nodes');
  const journalBytes = fs.statSync(file).size;
  t.ok(fs.existsSync(file) && !fs.existsSync(`${file}.new`), 'the journal file is in place, no compaction left half done');

  const reopened = NodeJournal.open(file);
  t.equal(reopened.rootIno, 7, 'the root inode survives');
  t.same(reopened.negotiated, { minor: 40, passthrough: true, noOpendir: true, exportSupport: retainLimit > 0 }, 'what INIT agreed survives');
  if (retainLimit > 0) t.ok(table.retainedCount > 0, `${table.retainedCount} forgotten nodes are retained`);
  const rebuilt = new NodeTable(7, 0o040000, retainLimit);
  const records = reopened.replayInto(rebuilt);
  t.ok(records > 0, `replayed ${records} records (journal file ${journalBytes} bytes)`);
  t.same(describe(rebuilt), describe(table), 'the rebuilt table equals the original');
  // New nodes get ids no earlier server handed out.
  const maxId = Math.max(...[...table.allNodes()].map((n) => n.id));
  t.ok(rebuilt.lookedUp(rebuilt.root, 'fresh', 99_999_999, 0o100000).id > maxId, 'ids are not reused');

  // A record torn by a kill in the middle of writing it (its header word never stored) is simply absent.
  const again = NodeJournal.open(file);
  const third = new NodeTable(7, 0o040000, retainLimit);
  again.replayInto(third);
  t.same(describe(third).length, describe(rebuilt).length, 'the same nodes (the fresh one included) come back from the journal');
});

interface Takeover {
  mnt: string;
  upper: string;
  /** Starts a server on the held connection (the first one mounts, later ones resume); `env` adds to ours. */
  startServer(env?: NodeJS.ProcessEnv): ChildProcess;
  logs: string[];
}

async function heldConnection(tt: Test, label: string, extraOptions: string[], fill: (lower: string) => void): Promise<Takeover> {
  const box = await Sandbox.create(tt, label);
  const { lower, upper, work, mnt } = box.overlayDirs(fill);
  const journal = path.join(box.dir('run'), 'nodes');
  const deviceFd = fs.openSync('/dev/fuse', 'r+');
  const servers: ChildProcess[] = [];
  box.onCleanup(() => {
    for (const s of servers) if (s.exitCode === null && s.signalCode === null) s.kill('SIGKILL');
    fs.closeSync(deviceFd);
  });
  const logs: string[] = [];
  const opts = [`lowerdir=${lower}`, `upperdir=${upper}`, `workdir=${work}`, 'loglevel=info', 'fuse_fd=3', `node_journal=${journal}`, ...extraOptions];
  return {
    mnt, upper, logs,
    startServer(env) {
      const server = spawn(process.execPath, [strataOverlayJs, '-f', '-o', opts.join(','), mnt], { stdio: ['ignore', 'ignore', 'pipe', deviceFd], env: { ...process.env, ...env } });
      const index = logs.push('') - 1;
      server.stderr?.on('data', (b: Buffer) => { logs[index] += b.toString(); });
      servers.push(server);
      return server;
    },
  };
}

async function waitForLog(take: Takeover, index: number, pattern: RegExp): Promise<void> {
  // Bounded wait for the server's own readiness line; not a timing assertion.
  for (let i = 0; i < 400 && !pattern.test(take.logs[index] ?? ''); i++) await new Promise((r) => setTimeout(r, 25));
}

for (const passthrough of ['on', 'off']) {
  t.test(`kill -9 of the server under busy writers (passthrough=${passthrough}): no error, no spill, same mount`, async (tt) => {
    const take = await heldConnection(tt, `takeover-${passthrough}`, [`passthrough=${passthrough}`], (lower) => {
      fs.mkdirSync(path.join(lower, 'dir/deep'), { recursive: true });
      fs.writeFileSync(path.join(lower, 'dir/deep/lowerfile'), Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n');
      fs.writeFileSync(path.join(lower, 'appended'), 'base\n');
    });
    const { mnt } = take;
    let server = take.startServer();
    await waitForLog(take, 0, /"msg":"mounted"/);
    tt.ok(isMounted(mnt), 'mounted on the held fd');
    const mountLine = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt);
    // Writers: absolute paths, a cwd inside the mount, a held write fd (adopted by each new server when it is
    // not a passthrough open) and a held read fd of a lower file read with O_DIRECT-free small reads.
    const script = [
      'set -u; fails=0',
      'fail() { fails=$((fails+1)); echo "failed: $1 $i" >&2; }',
      `exec 9>>${mnt}/appended`,
      `exec 8<${mnt}/dir/deep/lowerfile`,
      `cd ${mnt}/dir/deep`,
      'for i in $(seq 1 500); do',
      `  echo "abs $i" > ${mnt}/abs-$i || fail abs`,
      '  echo "rel $i" > rel-$i && mv rel-$i moved-$i || fail mv',
      '  [ "$(cat moved-$i)" = "rel $i" ] || fail cat',
      '  echo "held $i" >&9 || fail held',
      '  read -r line <&8 || fail read',
      '  mkdir -p d-$i/sub && ln moved-$i d-$i/sub/link && rm moved-$i || fail link',
      '  sleep 0.003',
      'done',
      'echo "fails=$fails last=$line"',
    ].join('\n');
    const writer = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    tt.teardown(() => { if (writer.exitCode === null) writer.kill('SIGKILL'); });
    let out = '';
    let err = '';
    writer.stdout?.on('data', (c: Buffer) => { out += c.toString(); });
    writer.stderr?.on('data', (c: Buffer) => { err += c.toString(); });
    const done = once(writer, 'exit');
    for (let round = 1; round <= 3; round++) {
      await new Promise((r) => setTimeout(r, 350));
      server.kill('SIGKILL');
      await once(server, 'exit');
      server = take.startServer();
      await waitForLog(take, round, /"msg":"resumed"/);
      tt.match(take.logs[round], /"msg":"resumed the FUSE connection"/, `server ${round} resumed the connection`);
    }
    const [code] = await done;
    tt.equal(code, 0, 'the writer exited 0');
    tt.equal(out.trim(), 'fails=0 last=line 499', 'nothing failed, and the held reader read on in order');
    tt.equal(err, '', 'no error messages');
    const lineNow = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt);
    tt.equal(lineNow?.split(' ')[0], mountLine?.split(' ')[0], 'the same mount throughout');
    const appended = fs.readFileSync(path.join(mnt, 'appended'), 'utf8').split('\n').filter(Boolean);
    tt.equal(appended.length, 501, 'every write through the held fd landed');
    tt.equal(appended[500], 'held 500');
    tt.equal(fs.readFileSync(path.join(mnt, 'dir/deep/d-500/sub/link'), 'utf8'), 'rel 500\n');
    tt.equal(fs.readFileSync(path.join(mnt, 'abs-250'), 'utf8'), 'abs 250\n');
    if (passthrough === 'off') tt.ok(take.logs.slice(1).some((l) => /adopted a file handle of an earlier server/.test(l)), 'a later server adopted the held fd\'s handle');
    tt.equal(run('umount', [mnt]).status, 0, 'umount');
    await once(server, 'exit');
    tt.same(fs.readdirSync(mnt), [], 'nothing landed in the directory under the mountpoint');
    tt.notOk(fs.existsSync(path.join(path.dirname(mnt), 'run', 'nodes')), 'the journal is removed once the mount is gone');
  });
}

/** renameat2(x, y, RENAME_EXCHANGE) in python (coreutils 9.1's mv has no --exchange). */
const EXCHANGE = 'import ctypes, os, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n' +
  'if libc.renameat2(-100, b"x", -100, b"y", 2) != 0: sys.exit(os.strerror(ctypes.get_errno()))';

/**
 * The hard case of a restart, made on purpose: the server has done a change but dies before its answer
 * (STRATA_TEST_DIE_BEFORE_REPLY=<op>, session.ts dieBeforeReplyTo), so the kernel sends the request again and
 * the next server finds the change made. Each change must then be answered as done, once: no EEXIST for a
 * mkdir, no ENOENT for an rm, no second copy of an O_APPEND write. The same commands on kernel overlayfs,
 * without restarts, give the tree the mount must end with.
 */
const DONE_BEFORE_ANSWER: readonly { op: string; command: string }[] = [
  { op: 'create', command: 'echo one > created' },
  { op: 'write', command: 'echo more >> appended' },
  { op: 'write', command: 'echo again >> appended' },
  { op: 'write', command: 'echo over > lowerfile' },
  { op: 'mkdir', command: 'mkdir newdir' },
  { op: 'mknod', command: 'mkfifo fifo' },
  { op: 'symlink', command: 'ln -s created sym' },
  { op: 'link', command: 'ln created hard' },
  { op: 'rename2', command: 'mv created renamed' },
  { op: 'rename2', command: 'mv lowermoved moved' },
  { op: 'rename', command: 'perl -e \'rename("renamed", "renamed2") or die "$!\\n"\'' },
  { op: 'rename2', command: `python3 -c '${EXCHANGE.replace('"x"', '"renamed2"').replace('"y"', '"lowerfile"')}'` },
  { op: 'unlink', command: 'rm lowergone' },
  { op: 'unlink', command: 'rm hard' },
  { op: 'rmdir', command: 'rmdir lowerdir' },
  { op: 'setxattr', command: 'setfattr -n user.k -v v appended' },
  { op: 'setxattr', command: 'python3 -c "import os; os.setxattr(\'appended\', \'user.c\', b\'1\', os.XATTR_CREATE)"' },
  { op: 'removexattr', command: 'setfattr -x user.k appended' },
  { op: 'setattr', command: 'chmod 600 appended' },
  { op: 'setattr', command: 'truncate -s 3 lowerfile' },
];

for (const passthrough of ['on', 'off']) t.test(`a change done but not answered before the server died is answered as done by the next one (passthrough=${passthrough})`, async (tt) => {
  const fill = (lower: string) => {
    fs.writeFileSync(path.join(lower, 'appended'), 'base\n');
    fs.writeFileSync(path.join(lower, 'lowerfile'), 'lower\n');
    fs.writeFileSync(path.join(lower, 'lowermoved'), 'moved\n');
    fs.writeFileSync(path.join(lower, 'lowergone'), 'gone\n');
    fs.mkdirSync(path.join(lower, 'lowerdir'));
  };
  const take = await heldConnection(tt, `resend-${passthrough}`, [`passthrough=${passthrough}`], fill);
  let server = take.startServer();
  await waitForLog(take, 0, /"msg":"mounted"/);
  tt.ok(isMounted(take.mnt), 'mounted on the held fd');
  for (const { op, command } of DONE_BEFORE_ANSWER) {
    // A passthrough open's writes go from the kernel to the upper file: no server sees them.
    if (op === 'write' && passthrough === 'on') {
      tt.equal(run('bash', ['-c', command], { cwd: take.mnt }).status, 0, `${command} (passthrough: no WRITE reaches a server)`);
      continue;
    }
    server.kill('SIGKILL');
    await once(server, 'exit');
    const dying = take.startServer({ STRATA_TEST_DIE_BEFORE_REPLY: op });
    await waitForLog(take, take.logs.length - 1, /"msg":"resumed"/);
    const client = spawn('bash', ['-c', command], { cwd: take.mnt, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    client.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
    const clientDone = once(client, 'exit');
    const first = await Promise.race([once(dying, 'exit').then(() => 'server'), clientDone.then(() => 'client')]);
    if (first === 'client') {
      tt.fail(`${command}: finished without a ${op} (stderr: ${stderr})`);
      server = dying;
      continue;
    }
    tt.match(take.logs[take.logs.length - 1], new RegExp(`"op":"${op}".*dying before the reply`), `${command}: the server did ${op} and died before answering`);
    tt.equal(client.exitCode, null, `${command}: still waiting for its answer`);
    server = take.startServer();
    await waitForLog(take, take.logs.length - 1, /"msg":"resumed"/);
    const [code] = await clientDone;
    tt.same({ code, stderr }, { code: 0, stderr: '' }, `${command}: done once, and answered as done`);
  }

  const box = await Sandbox.create(tt, `resend-oracle-${passthrough}`);
  const lower = box.dir('lower');
  fill(lower);
  const oracle = box.mount('kernel', { lowers: [lower], upper: box.dir('upper'), work: box.dir('work'), mnt: box.dir('mnt') });
  for (const { command } of DONE_BEFORE_ANSWER) run('bash', ['-c', command], { cwd: oracle.mnt });
  tt.same(diffTrees(snapshotTree(oracle.mnt), snapshotTree(take.mnt)), [], 'the tree is the one kernel overlayfs ends with');
  tt.equal(fs.readFileSync(path.join(take.mnt, 'appended'), 'utf8'), 'base\nmore\nagain\n', 'each append landed once');
  box.unmount(oracle);
  tt.equal(run('umount', [take.mnt]).status, 0, 'umount');
  await once(server, 'exit');
});

/** Requests waiting in the kernel for the mount's connection (fusectl's `waiting`), read without touching the mount. */
function waitingRequests(mnt: string): number {
  const entry = readMountTableSync().find((e) => e.mountPoint === mnt);
  const id = entry === undefined ? undefined : fuseConnectionId(entry);
  if (id === undefined) throw new Error(`no FUSE mount at ${mnt}`);
  return Number(fs.readFileSync(`${FUSECTL_DIR}/${id}/waiting`, 'utf8'));
}

/**
 * Requests made while no server runs wait in the kernel; the next server must do each of them once. (It once
 * started reading before it asked for the resend, so a request it had read already came back and ran twice:
 * an exchange swapped back, an O_APPEND write landed twice.)
 */
t.test('requests made while no server runs are done once by the next one', async (tt) => {
  const take = await heldConnection(tt, 'resend-waiting', ['passthrough=off'], (lower) => {
    fs.writeFileSync(path.join(lower, 'x'), 'x\n');
    fs.writeFileSync(path.join(lower, 'y'), 'y\n');
    fs.writeFileSync(path.join(lower, 'log'), 'one\n');
  });
  let server = take.startServer();
  await waitForLog(take, 0, /"msg":"mounted"/);
  // Looked up now, so the clients below only wait for their change itself.
  run('stat', ['x', 'y', 'log'], { cwd: take.mnt });
  server.kill('SIGKILL');
  await once(server, 'exit');
  const clients = [spawn('python3', ['-c', EXCHANGE], { cwd: take.mnt, stdio: 'inherit' }), spawn('bash', ['-c', 'echo two >> log'], { cwd: take.mnt, stdio: 'inherit' })];
  for (let i = 0; i < 400 && waitingRequests(take.mnt) < 2; i++) await new Promise((r) => setTimeout(r, 25));
  tt.ok(waitingRequests(take.mnt) >= 2, 'both changes wait in the kernel');
  server = take.startServer();
  // Bounded, not timed: a request answered with the wrong unique leaves its client waiting for good.
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<number[]>((resolve) => { timer = setTimeout(() => resolve(clients.map((c) => c.exitCode ?? -1)), 30_000); });
  const codes = await Promise.race([Promise.all(clients.map(async (c) => (await once(c, 'exit'))[0] as number)), stuck]);
  clearTimeout(timer);
  for (const c of clients) if (c.exitCode === null) c.kill('SIGKILL');
  tt.same(codes, [0, 0], 'both clients were answered with success');
  tt.equal(fs.readFileSync(path.join(take.mnt, 'x'), 'utf8'), 'y\n', 'the exchange was done once (x has y\'s data)');
  tt.equal(fs.readFileSync(path.join(take.mnt, 'y'), 'utf8'), 'x\n');
  tt.equal(fs.readFileSync(path.join(take.mnt, 'log'), 'utf8'), 'one\ntwo\n', 'the append landed once');
  tt.equal(run('umount', [take.mnt]).status, 0, 'umount');
  await once(server, 'exit');
});

t.test('a server that finds no live connection in the journal mounts afresh on the given fd', async (tt) => {
  const take = await heldConnection(tt, 'takeover-fresh', [], (lower) => fs.writeFileSync(path.join(lower, 'f'), 'x\n'));
  const server = take.startServer();
  await waitForLog(take, 0, /"msg":"mounted"/);
  tt.equal(fs.readFileSync(path.join(take.mnt, 'f'), 'utf8'), 'x\n');
  tt.equal(run('umount', [take.mnt]).status, 0, 'umount');
  await once(server, 'exit');
});

t.test('bad take-over options are refused with a clear error', async (tt) => {
  const box = await Sandbox.create(tt, 'takeover-options');
  const lower = box.dir('lower');
  const mnt = box.dir('mnt');
  const attempt = (options: string) => run(process.execPath, [strataOverlayJs, '-f', '-o', `lowerdir=${lower},${options}`, mnt]);
  let r = attempt('node_journal=/tmp/x');
  tt.equal(r.status, 2);
  tt.match(r.stderr, /node_journal= needs fuse_fd=/);
  r = attempt('fuse_fd=abc');
  tt.equal(r.status, 2);
  tt.match(r.stderr, /fuse_fd= needs a file descriptor number, got "abc"/);
  r = attempt('fuse_fd=3,transport=fuse-native');
  tt.equal(r.status, 2);
  tt.match(r.stderr, /fuse_fd= works only with transport=kernel/);
  tt.notOk(isMounted(mnt), 'nothing mounted');
});
