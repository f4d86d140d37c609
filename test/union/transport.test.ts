/**
 * Strata's own FUSE transport (lib/fuse/kernel), checked through real mounts on this kernel: the 7.40 protocol
 * values we define ourselves (passthrough really engages: an upper file's reads and writes never reach the
 * server), the forced fallback (-o passthrough=off: they do, with the same data), copy-up switching an open
 * reader in both modes, renameat2 flags, and lookup/forget accounting (the node table empties when the kernel
 * drops its caches). The server runs in the foreground with loglevel=info, and its last log line ("FUSE
 * connection ended") reports how many requests of each kind it answered and how many nodes it still held.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { isMounted, requireCandidate, run, Sandbox, strataOverlayJs } from '../helpers/sandbox.js';
import { sys, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT } from '../../lib/native/index.js';

requireCandidate('strata');

interface EndStats {
  ops: Record<string, number>;
  /** READ/WRITE the reader thread served without JS (native direct_io). */
  directReads: number;
  directWrites: number;
  nodes: number;
  passthrough: boolean;
}

interface Server {
  mnt: string;
  lower: string;
  upper: string;
  /** Unmounts, waits for the server to exit 0 and returns what it logged about the connection. */
  stop(): Promise<EndStats>;
}

async function serve(tt: Test, label: string, options: string[], fill: (lower: string) => void): Promise<Server> {
  const box = await Sandbox.create(tt, label);
  const { lower, upper, work, mnt } = box.overlayDirs(fill);
  const opts = [`lowerdir=${lower}`, `upperdir=${upper}`, `workdir=${work}`, 'transport=kernel', 'loglevel=info', ...options];
  const server = spawn(process.execPath, [strataOverlayJs, '-f', '-o', opts.join(','), mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  box.onCleanup(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
  });
  let log = '';
  server.stderr.on('data', (b: Buffer) => {
    log += b.toString();
  });
  const exited = once(server, 'exit');
  // Waiting for readiness, bounded; not a timing assertion.
  for (let i = 0; i < 300 && !isMounted(mnt) && server.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  tt.ok(isMounted(mnt), 'mounted');
  return {
    mnt, lower, upper,
    async stop() {
      tt.equal(run('umount', [mnt]).status, 0, 'umount');
      const [code] = await exited;
      tt.equal(code, 0, 'the server exits 0');
      const lines = log.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
      const init = lines.find((l) => l.msg === 'FUSE INIT');
      const end = lines.find((l) => l.msg === 'FUSE connection ended');
      tt.ok(end, 'the server logged the end of the connection');
      return {
        ops: (end?.ops ?? {}) as Record<string, number>,
        directReads: Number(end?.directReads ?? 0),
        directWrites: Number(end?.directWrites ?? 0),
        nodes: Number(end?.nodes ?? -1),
        passthrough: init?.passthrough === true,
      };
    },
  };
}

const MiB = 1024 * 1024;
const pattern = (seed: number) => Buffer.alloc(MiB, `strata ${seed} `);

t.test('passthrough: an upper file is read and written without the server; passthrough=off serves them', async (t) => {
  for (const mode of ['on', 'off'] as const) {
    await t.test(`passthrough=${mode}`, async (tt) => {
      const s = await serve(tt, `transport-pt-${mode}`, [`passthrough=${mode}`], (lower) => fs.writeFileSync(path.join(lower, 'low'), 'lower data'));
      const file = path.join(s.mnt, 'new.bin');
      fs.writeFileSync(file, pattern(1));
      tt.same(fs.readFileSync(file), pattern(1), 'reads back what was written');
      // A second open for writing of the same node: shares the node's backing file in passthrough mode.
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.from('HEAD'), 0, 4, 0);
      fs.closeSync(fd);
      tt.equal(fs.readFileSync(file).subarray(0, 6).toString(), 'HEADta', 'a write through a second open is seen');
      tt.equal(fs.readFileSync(path.join(s.upper, 'new.bin')).subarray(0, 4).toString(), 'HEAD', 'it reached the upper file');
      tt.equal(fs.readFileSync(path.join(s.mnt, 'low'), 'utf8'), 'lower data', 'a lower file reads (cached mode)');
      const end = await s.stop();
      tt.equal(end.passthrough, mode === 'on', `INIT agreed passthrough: ${end.passthrough}`);
      if (mode === 'on') {
        tt.equal(end.ops.write ?? 0, 0, 'no WRITE reached the server');
        tt.equal(end.ops.read ?? 0, 1, 'only the lower file was READ through the server');
        tt.equal(end.directReads, 1, 'by the reader thread, without JS');
      } else {
        tt.ok((end.ops.write ?? 0) > 0, `WRITEs reached the server (${end.ops.write})`);
        tt.ok((end.ops.read ?? 0) >= 1, `READs reached the server (${end.ops.read}; written pages are cached)`);
        tt.equal(end.directWrites, end.ops.write, 'the reader thread served every WRITE itself, without JS');
      }
    });
  }
});

t.test('a reader of a lower file sees the upper copy after another process writes it', async (t) => {
  for (const mode of ['on', 'off'] as const) {
    await t.test(`passthrough=${mode}`, async (tt) => {
      const s = await serve(tt, `transport-cu-${mode}`, [`passthrough=${mode}`], (lower) => fs.writeFileSync(path.join(lower, 'f'), 'old content'));
      const file = path.join(s.mnt, 'f');
      const reader = fs.openSync(file, 'r');
      const buf = Buffer.alloc(64);
      tt.equal(buf.toString('utf8', 0, fs.readSync(reader, buf, 0, 64, 0)), 'old content', 'reads the lower');
      const writer = fs.openSync(file, 'r+');
      fs.writeSync(writer, Buffer.from('NEW'), 0, 3, 0);
      tt.equal(buf.toString('utf8', 0, fs.readSync(reader, buf, 0, 64, 0)), 'NEW content', 'the open reader sees the write');
      fs.closeSync(writer);
      fs.closeSync(reader);
      tt.equal(fs.readFileSync(file, 'utf8'), 'NEW content', 'a new open sees it');
      const again = fs.openSync(file, 'r+');
      fs.writeSync(again, Buffer.from('N2W'), 0, 3, 0);
      fs.closeSync(again);
      tt.equal(fs.readFileSync(file, 'utf8'), 'N2W content', 'an upper file written again (passthrough when on)');
      await s.stop();
    });
  }
});

t.test('renameat2 flags (on a nosuid,nodev,noexec mount: those flags reach mount(2))', async (tt) => {
  const s = await serve(tt, 'transport-rename2', ['nosuid', 'nodev', 'noexec'], (lower) => {
    fs.writeFileSync(path.join(lower, 'a'), 'A');
    fs.writeFileSync(path.join(lower, 'b'), 'B');
    fs.mkdirSync(path.join(lower, 'd'));
    fs.writeFileSync(path.join(lower, 'd/in'), 'in d');
  });
  const at = (name: string) => path.join(s.mnt, name);
  const line = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === s.mnt) ?? '';
  tt.match(line.split(' ')[3] ?? '', /(^|,)nosuid,nodev,noexec(,|$)/, `mount flags: ${line}`);
  tt.throws(() => sys.renameat2(at('a'), at('b'), RENAME_NOREPLACE), { code: 'EEXIST' }, 'NOREPLACE onto an existing name');
  sys.renameat2(at('a'), at('c'), RENAME_NOREPLACE);
  tt.same([fs.existsSync(at('a')), fs.readFileSync(at('c'), 'utf8')], [false, 'A'], 'NOREPLACE onto a new name renames');
  tt.throws(() => sys.renameat2(at('c'), at('e'), RENAME_WHITEOUT), { code: 'EINVAL' }, 'WHITEOUT is EINVAL, as on overlayfs');
  sys.renameat2(at('b'), at('d'), RENAME_EXCHANGE);
  tt.equal(fs.readFileSync(at('d'), 'utf8'), 'B', 'EXCHANGE: the file took the dir\'s name');
  tt.equal(fs.readFileSync(at('b/in'), 'utf8'), 'in d', 'and the dir, with its lower contents, the file\'s');
  tt.throws(() => sys.renameat2(at('b'), at('nowhere'), RENAME_EXCHANGE), { code: 'ENOENT' }, 'EXCHANGE with a missing name');
  await s.stop();
});

t.test('lookup counts: the node table empties when the kernel drops its caches', async (tt) => {
  const s = await serve(tt, 'transport-forget', [], (lower) => {
    for (let d = 0; d < 10; d++) {
      fs.mkdirSync(path.join(lower, `d${d}`));
      for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(lower, `d${d}`, `f${f}`), `${d}/${f}`);
      fs.linkSync(path.join(lower, `d${d}`, 'f0'), path.join(lower, `d${d}`, 'link'));
    }
  });
  // Both by LOOKUP (stat) and by READDIRPLUS (ls -l), with hard links sharing nodes.
  for (let d = 0; d < 10; d++) {
    for (let f = 0; f < 100; f++) fs.statSync(path.join(s.mnt, `d${d}`, `f${f}`));
  }
  run('ls', ['-lR', s.mnt]);
  tt.equal(fs.statSync(path.join(s.mnt, 'd3/link')).ino, fs.statSync(path.join(s.mnt, 'd3/f0')).ino, 'hard links share st_ino');
  // Dentries and inodes of this mount are unused now: dropping them sends FORGET / BATCH_FORGET.
  fs.writeFileSync('/proc/sys/vm/drop_caches', '2');
  const end = await s.stop();
  tt.ok((end.ops.forget ?? 0) + (end.ops.batch_forget ?? 0) > 0, 'the kernel sent forgets');
  tt.ok(end.nodes <= 2, `at most the root (and the mount's own dentry) left, got ${end.nodes} of over 1,000 nodes`);
});

t.test('no OPENDIR: a tree walk sends neither OPENDIR nor RELEASEDIR, listings stay consistent', async (tt) => {
  const s = await serve(tt, 'transport-noopendir', [], (lower) => {
    for (let d = 0; d < 50; d++) {
      fs.mkdirSync(path.join(lower, `d${d}`));
      for (let f = 0; f < 20; f++) fs.writeFileSync(path.join(lower, `d${d}`, `f${f}`), `${d}/${f}`);
    }
    fs.mkdirSync(path.join(lower, 'big'));
    for (let f = 0; f < 3000; f++) fs.writeFileSync(path.join(lower, 'big', `entry-${f}`), '');
    fs.mkdirSync(path.join(lower, 'gone/inner'), { recursive: true });
  });
  tt.equal(run('find', [s.mnt]).stdout.split('\n').filter(Boolean).length, 1 + 50 * 21 + 1 + 3000 + 2, 'find lists every entry once');
  tt.equal(run('find', [s.mnt]).stdout.split('\n').filter(Boolean).length, 1 + 50 * 21 + 1 + 3000 + 2, 'and again, from the kernel\'s cached listings');

  // Readers that start over while rm -rf walks and empties the same dir: each reader's offsets name its own
  // snapshot, so rm's continuation is not shifted by theirs (a shifted index would skip names, and rm would fail
  // with "Directory not empty").
  const lister = spawn('bash', ['-c', `for i in $(seq 1 300); do ls -f ${s.mnt}/big > /dev/null 2>&1; done`]);
  // Unlinks each name as it reads it (getdents in chunks, unlink in between), as a streaming rm would.
  const streaming = [
    'import os, sys, time',
    'd = sys.argv[1]; seen = 0',
    'with os.scandir(d) as it:',
    '    for e in it:',
    '        os.unlink(os.path.join(d, e.name)); seen += 1',
    '        if seen % 500 == 0: time.sleep(0.05)',
    'print(seen, len(os.listdir(d)))',
  ].join('\n');
  const reader = run('python3', ['-c', streaming, path.join(s.mnt, 'big')]);
  await once(lister, 'exit');
  tt.equal(reader.stdout.trim(), '3000 0', `a reader unlinking as it goes sees every name once while others list the dir: ${reader.stderr}`);
  tt.equal(run('rmdir', [path.join(s.mnt, 'big')]).status, 0, 'and the dir is then empty');

  // fstat of an open dir after rmdir answers from the removed dir, as on the kernel.
  const fd = fs.openSync(path.join(s.mnt, 'gone/inner'), 'r');
  fs.rmdirSync(path.join(s.mnt, 'gone/inner'));
  tt.ok(fs.fstatSync(fd).isDirectory(), 'fstat of the open, removed dir works');
  fs.closeSync(fd);

  const end = await s.stop();
  tt.ok((end.ops.opendir ?? 0) <= 1, `at most one OPENDIR (answered ENOSYS), got ${end.ops.opendir ?? 0}`);
  tt.equal(end.ops.releasedir ?? 0, 0, 'no RELEASEDIR');
  tt.ok((end.ops.readdirplus ?? 0) + (end.ops.readdir ?? 0) > 0, 'listings were read');
});
