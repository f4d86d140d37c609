/**
 * The `volatile` mount option, with kernel overlayfs as the oracle:
 *  - both accept it, serve the union as usual and create the marker <workdir>/work/incompat/volatile/dirty;
 *  - the marker outlives the unmount, and every later mount of that workdir (volatile or not) is refused until
 *    the user removes it; the kernel refuses strata's marker too (same on-disk format);
 *  - strata then really skips its fsyncs (copy-up, the user's fsync/fdatasync of files and dirs), seen with strace on the
 *    server, while a default mount does them (the default stays crash-safe).
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fuseServerPids, mountCommand, requireCandidate, run, Sandbox, sleepMs, type OverlayKind } from '../helpers/sandbox.js';

requireCandidate('strata');
const KINDS: OverlayKind[] = ['kernel', 'strata'];

async function layers(t: Test, label: string) {
  const box = await Sandbox.create(t, label);
  const dirs = (name: string) => {
    const lower = box.dir(`${name}/lower`);
    fs.writeFileSync(path.join(lower, 'f'), 'lower f\n');
    return { lowers: [lower], upper: box.dir(`${name}/upper`), work: box.dir(`${name}/work`), mnt: box.dir(`${name}/mnt`) };
  };
  return { box, dirs };
}

const marker = (work: string) => path.join(work, 'work', 'incompat', 'volatile');

/** Tries a mount without throwing, and tracks the mount point so teardown unmounts whatever did mount. */
function tryMount(box: Sandbox, kind: OverlayKind, d: ReturnType<Awaited<ReturnType<typeof layers>>['dirs']>, extra: string[]) {
  box.track(d.mnt);
  const [cmd, args] = mountCommand(kind, d, extra);
  return run(cmd, args, { timeoutMs: 60_000 });
}

t.test('volatile: accepted, marker left behind, later mounts refused until it is removed (kernel and strata)', async (t) => {
  const { box, dirs } = await layers(t, 'volatile');
  for (const kind of KINDS) {
    await t.test(kind, async (tt) => {
      const d = dirs(kind);
      const first = tryMount(box, kind, d, ['volatile']);
      tt.equal(first.status, 0, `mounts with -o volatile ${first.stderr}`);
      tt.ok(fs.existsSync(path.join(marker(d.work), 'dirty')), 'work/incompat/volatile/dirty exists while mounted');
      // Copy-up, a new file and the user's syncs all work; they simply reach no disk.
      fs.appendFileSync(path.join(d.mnt, 'f'), 'more\n');
      fs.writeFileSync(path.join(d.mnt, 'g'), 'new\n');
      const fd = fs.openSync(path.join(d.mnt, 'g'), 'r+');
      fs.fsyncSync(fd);
      fs.fdatasyncSync(fd);
      fs.closeSync(fd);
      tt.equal(run('sync', ['-f', path.join(d.mnt, 'g')]).status, 0, 'syncfs succeeds');
      tt.equal(fs.readFileSync(path.join(d.upper, 'f'), 'utf8'), 'lower f\nmore\n', 'copied up with the write');
      box.unmount(d.mnt);
      tt.ok(fs.existsSync(path.join(marker(d.work), 'dirty')), 'the marker outlives the unmount');

      for (const extra of [[], ['volatile']]) {
        const again = tryMount(box, kind, d, extra);
        tt.not(again.status, 0, `a later mount (${extra.join(',') || 'default'}) is refused`);
        if (kind === 'strata') tt.match(again.stderr, /incompatible feature "volatile".*remove .*incompat\/volatile/, 'strata says why and what to do');
      }
      fs.rmSync(marker(d.work), { recursive: true });
      const fresh = tryMount(box, kind, d, []);
      tt.equal(fresh.status, 0, `mounts again once the marker is removed ${fresh.stderr}`);
      tt.equal(fs.readFileSync(path.join(d.mnt, 'f'), 'utf8'), 'lower f\nmore\n', 'the upper is intact');
      tt.notOk(fs.existsSync(path.join(d.work, 'work', 'incompat')), 'a default mount leaves no marker');
      box.unmount(d.mnt);
    });
  }
  await t.test('the kernel refuses the marker strata left', async (tt) => {
    const d = dirs('strata-for-kernel');
    const r = tryMount(box, 'strata', d, ['volatile']);
    tt.equal(r.status, 0, r.stderr);
    box.unmount(d.mnt);
    tt.not(tryMount(box, 'kernel', d, []).status, 0, 'kernel overlayfs will not mount it either');
  });
});

t.test('volatile: strata skips the fsyncs of copy-up and of users; the default does them', async (t) => {
  const { box, dirs } = await layers(t, 'volatile-sync');
  const counts: Record<string, number> = {};
  for (const mode of ['default', 'volatile'] as const) {
    const d = dirs(mode);
    const r = tryMount(box, 'strata', d, mode === 'volatile' ? ['volatile'] : []);
    t.equal(r.status, 0, r.stderr);
    const pid = fuseServerPids(d.mnt)[0];
    t.ok(pid, 'found the server');
    const log = path.join(box.root, `strace-${mode}.txt`);
    const tracer = spawn('strace', ['-f', '-qq', '-e', 'trace=fsync,fdatasync,syncfs,sync_file_range', '-o', log, '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    box.onCleanup(() => tracer.kill('SIGKILL'));
    // strace has attached once the tracee's TracerPid names it.
    for (let i = 0; i < 500 && !fs.readFileSync(`/proc/${pid}/status`, 'utf8').includes(`TracerPid:\t${tracer.pid}`); i++) sleepMs(20);
    t.match(fs.readFileSync(`/proc/${pid}/status`, 'utf8'), new RegExp(`TracerPid:\\t${tracer.pid}\\b`), 'strace attached');
    fs.appendFileSync(path.join(d.mnt, 'f'), 'more\n'); // copy-up
    const fd = fs.openSync(path.join(d.mnt, 'f'), 'r+');
    fs.fsyncSync(fd);
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    const dirFd = fs.openSync(d.mnt, 'r');
    fs.fsyncSync(dirFd); // the upper root: a directory's fsync
    fs.closeSync(dirFd);
    const exited = new Promise((resolve) => tracer.once('exit', resolve));
    tracer.kill('SIGINT');
    await exited;
    counts[mode] = fs.readFileSync(log, 'utf8').split('\n').filter((l) => /\b(fsync|fdatasync|syncfs|sync_file_range)\(/.test(l)).length;
    box.unmount(d.mnt);
  }
  t.ok((counts.default ?? 0) >= 4, `a default mount syncs the copy-up, the file and the directory (${counts.default} calls)`);
  t.equal(counts.volatile, 0, 'a volatile mount syncs nothing');
});
