/**
 * strata-overlay's safety-relevant behaviour, used by hand:
 *  - fsync of a directory syncs the real upper dir (as ovl_dir_fsync does) instead of answering success untouched;
 *  - the generic `nosuid` and `nodev` options reach the kernel mount flags, and without them root gets the kernel's
 *    defaults (suid, dev), as mount(8) users expect.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fuseServerPids, isMounted, mountLine, run, Sandbox, strataOverlayJs, waitForExit } from '../helpers/sandbox.js';

/** Runs strata-overlay in the foreground at debug level, collecting its log, and waits until the mount is live. */
async function foregroundMount(box: Sandbox, options: string, mnt: string): Promise<{ child: ChildProcess; log: () => string }> {
  let stderr = '';
  const child = spawn(process.execPath, [strataOverlayJs, '-f', '-o', `${options},loglevel=debug`, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  box.track(mnt);
  box.onCleanup(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  for (let i = 0; i < 600 && !isMounted(mnt); i++) {
    if (child.exitCode !== null) throw new Error(`strata-overlay exited ${child.exitCode}: ${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  if (!isMounted(mnt)) throw new Error(`strata-overlay did not mount ${mnt}: ${stderr}`);
  return { child, log: () => stderr };
}

/** The real-fs calls the server logged at debug level with op "fsyncdir". */
function fsyncdirCalls(log: string): Array<{ path: string; err?: string }> {
  return log.split('\n').filter((line) => line.includes('"op":"fsyncdir"')).map((line) => JSON.parse(line) as { path: string; err?: string });
}

/** fsync(2) on an O_DIRECTORY fd; resolves with the errno name, or undefined on success. */
function fsyncDirectory(dir: string): string | undefined {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  } finally {
    fs.closeSync(fd);
  }
}

t.test('fsync of a directory syncs the real upper dir', async (t) => {
  const box = await Sandbox.create(t, 'fsyncdir');
  const lower = box.dir('lower');
  fs.mkdirSync(path.join(lower, 'only-lower'));
  fs.mkdirSync(path.join(lower, 'merged'));
  const upper = box.dir('upper');
  const mnt = box.dir('mnt');
  const { child, log } = await foregroundMount(box, `lowerdir=${lower},upperdir=${upper},workdir=${box.dir('work')}`, mnt);

  fs.mkdirSync(path.join(mnt, 'new'));
  fs.writeFileSync(path.join(mnt, 'new/f'), 'x');
  fs.writeFileSync(path.join(mnt, 'merged/g'), 'y');
  t.equal(fsyncDirectory(path.join(mnt, 'new')), undefined, 'fsync of a new dir succeeds');
  t.equal(fsyncDirectory(path.join(mnt, 'merged')), undefined, 'fsync of a copied-up dir succeeds');
  t.equal(fsyncDirectory(path.join(mnt, 'only-lower')), undefined, 'fsync of a lower-only dir succeeds (nothing to sync)');
  // The server logs before it replies; our end of its stderr pipe is read by the event loop, so let it turn.
  const wanted = [path.join(upper, 'new'), path.join(upper, 'merged')];
  for (let i = 0; i < 400 && !wanted.every((p) => fsyncdirCalls(log()).some((c) => c.path === p)); i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const synced = fsyncdirCalls(log()).map((c) => c.path);
  t.ok(synced.includes(path.join(upper, 'new')), 'the new dir was synced in the upper');
  t.ok(synced.includes(path.join(upper, 'merged')), 'the copied-up dir was synced in the upper');
  t.notOk(synced.some((p) => p.includes('only-lower')), 'a dir only in a lower layer is not synced (as on overlayfs)');

  // Proof that the server really goes to the upper dir: take it away underneath, and fsync reports the failure.
  fs.mkdirSync(path.join(mnt, 'doomed'));
  const fd = fs.openSync(path.join(mnt, 'doomed'), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  fs.rmdirSync(path.join(upper, 'doomed'));
  let code: string | undefined;
  try {
    fs.fsyncSync(fd);
  } catch (err) {
    code = (err as NodeJS.ErrnoException).code;
  } finally {
    fs.closeSync(fd);
  }
  t.equal(code, 'ENOENT', 'fsync of a dir whose upper vanished fails instead of pretending');

  const pids = fuseServerPids(mnt);
  t.equal(run('umount', [mnt]).status, 0);
  t.ok(waitForExit(pids.length > 0 ? pids : [child.pid ?? 0]), 'the server ended');
});

t.test('nosuid and nodev reach the kernel mount; root gets the kernel defaults otherwise', async (t) => {
  const box = await Sandbox.create(t, 'suid-flags');
  const lower = box.dir('lower');
  const flagsOf = (mnt: string) => (mountLine(mnt) ?? '').split(' ')[3]?.split(',') ?? [];
  const cases: Array<{ extra: string; nosuid: boolean; nodev: boolean }> = [
    { extra: '', nosuid: false, nodev: false },
    { extra: ',nosuid', nosuid: true, nodev: false },
    { extra: ',nodev,nosuid', nosuid: true, nodev: true },
    { extra: ',nosuid,suid,dev', nosuid: false, nodev: false },
  ];
  for (const [i, c] of cases.entries()) {
    const mnt = box.dir(`mnt${i}`);
    box.track(mnt);
    const r = run(process.execPath, [strataOverlayJs, '-o', `lowerdir=${lower},upperdir=${box.dir(`upper${i}`)},workdir=${box.dir(`work${i}`)}${c.extra}`, mnt]);
    t.equal(r.status, 0, `mounts with "${c.extra}" ${r.stderr}`);
    const flags = flagsOf(mnt);
    t.equal(flags.includes('nosuid'), c.nosuid, `"${c.extra}": nosuid is ${c.nosuid ? 'set' : 'not set'} (${flags.join(',')})`);
    t.equal(flags.includes('nodev'), c.nodev, `"${c.extra}": nodev is ${c.nodev ? 'set' : 'not set'}`);
    const pids = fuseServerPids(mnt);
    t.equal(run('umount', [mnt]).status, 0);
    waitForExit(pids);
  }
});
