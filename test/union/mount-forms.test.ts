/**
 * The ways users start strata-overlay (fuse-overlayfs's conventions): the -o form, the mount.fuse form with
 * SOURCE and generic options, `mount -t fuse.strata-overlay` through mount.fuse3, -f in the foreground, fsname,
 * silence on success, and `umount` ending the server.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { requireCandidate, fuseServerPids, isMounted, mountLine, run, Sandbox, strataOverlayJs, strataTransportOption, waitForExit } from '../helpers/sandbox.js';

/** The transport under test (STRATA_TEST_TRANSPORT), appended to each option list. */
const transport = strataTransportOption() === undefined ? '' : `,transport=${strataTransportOption()}`;

requireCandidate('strata');

async function layers(t: Test, label: string) {
  const box = await Sandbox.create(t, label);
  const lower = box.dir('lower');
  fs.writeFileSync(path.join(lower, 'f'), 'lower f');
  return { box, lower, upper: box.dir('upper'), work: box.dir('work'), mnt: box.dir('mnt') };
}

/** Checks the mount serves the lower and writes to the upper, then unmounts and checks the server ended. */
function useAndUnmount(tt: Test, d: { mnt: string; upper: string }) {
  tt.equal(fs.readFileSync(path.join(d.mnt, 'f'), 'utf8'), 'lower f', 'serves the lower');
  fs.writeFileSync(path.join(d.mnt, 'g'), 'new');
  tt.equal(fs.readFileSync(path.join(d.upper, 'g'), 'utf8'), 'new', 'writes go to the upper');
  const pids = fuseServerPids(d.mnt);
  tt.equal(pids.length, 1, 'one server process');
  const r = run('umount', [d.mnt]);
  tt.equal(r.status, 0, `plain umount works ${r.stderr}`);
  tt.ok(waitForExit(pids), 'umount ends the server');
}

t.test('the -o form prints nothing, honours fsname and ignores generic options', async (t) => {
  const d = await layers(t, 'form-o');
  d.box.track(d.mnt);
  const r = run(process.execPath, [strataOverlayJs, '-o', `lowerdir=${d.lower},upperdir=${d.upper},workdir=${d.work},fsname=my-union,rw,noatime,nodev${transport}`, d.mnt]);
  t.equal(r.status, 0, `exits 0 ${r.stderr}`);
  t.equal(r.stdout + r.stderr, '', 'prints nothing on success');
  t.ok(isMounted(d.mnt), 'the mount is live when it returns');
  t.match(mountLine(d.mnt) ?? '', /^my-union /, 'fsname is the mount source');
  t.match(mountLine(d.mnt) ?? '', /allow_other/, 'mounted with allow_other');
  t.match(mountLine(d.mnt) ?? '', /default_permissions/, 'mounted with kernel permission checks');
  useAndUnmount(t, d);
});

t.test('without fsname, the mount source shows the overlay options in effect', async (t) => {
  const d = await layers(t, 'form-effective');
  d.box.track(d.mnt);
  const r = run(process.execPath, [strataOverlayJs, '-o', `lowerdir=${d.lower},upperdir=${d.upper},workdir=${d.work},index=off,redirect_dir=off,xino=auto`, d.mnt]);
  t.equal(r.status, 0, `exits 0 ${r.stderr}`);
  t.match(mountLine(d.mnt) ?? '', /^strata-overlay:redirect_dir=follow,index=off,xino=on,uuid=on /, 'redirect_dir=off is follow, index is off');
  useAndUnmount(t, d);
  const u = await layers(t, 'form-effective-user');
  u.box.track(u.mnt);
  const ru = run(process.execPath, [strataOverlayJs, '-o', `lowerdir=${u.lower},upperdir=${u.upper},workdir=${u.work},userxattr`, u.mnt]);
  t.equal(ru.status, 0, `exits 0 ${ru.stderr}`);
  t.match(mountLine(u.mnt) ?? '', /^strata-overlay:redirect_dir=nofollow,index=on,xino=on,uuid=on,userxattr /, 'userxattr implies redirect_dir=nofollow');
  useAndUnmount(t, u);
});

t.test('the mount.fuse form: SOURCE MOUNTPOINT -o options', async (t) => {
  const d = await layers(t, 'form-fuse');
  d.box.track(d.mnt);
  const r = run(process.execPath, [strataOverlayJs, 'demo-source', d.mnt, '-o', `rw,lowerdir=${d.lower},upperdir=${d.upper},workdir=${d.work},dev,suid${transport}`]);
  t.equal(r.status, 0, `exits 0 ${r.stderr}`);
  t.equal(r.stdout + r.stderr, '', 'prints nothing on success');
  t.match(mountLine(d.mnt) ?? '', /^demo-source /, 'SOURCE is the fsname');
  useAndUnmount(t, d);
});

t.test('mount -t fuse.strata-overlay goes through mount.fuse3', async (t) => {
  const d = await layers(t, 'form-mount');
  d.box.track(d.mnt);
  const r = run('mount', ['-t', 'fuse.strata-overlay', 'by-mount', d.mnt, '-o', `lowerdir=${d.lower},upperdir=${d.upper},workdir=${d.work}${transport}`]);
  t.equal(r.status, 0, `mount exits 0 (needs the helper installed by scripts/setup.sh) ${r.stderr}`);
  t.match(mountLine(d.mnt) ?? '', /^by-mount \S+ fuse\.strata-overlay /, 'listed as fuse.strata-overlay with its source');
  useAndUnmount(t, d);
});

t.test('-f stays in the foreground until umount, then exits 0', async (t) => {
  const d = await layers(t, 'form-f');
  d.box.track(d.mnt);
  const server = spawn(process.execPath, [strataOverlayJs, '-f', '-o', `lowerdir=${d.lower},upperdir=${d.upper},workdir=${d.work}${transport}`, d.mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  d.box.onCleanup(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let output = '';
  server.stdout.on('data', (b: Buffer) => { output += b.toString(); });
  server.stderr.on('data', (b: Buffer) => { output += b.toString(); });
  const exited = once(server, 'exit');
  // Waiting for readiness, bounded; not a timing assertion.
  for (let i = 0; i < 300 && !isMounted(d.mnt) && server.exitCode === null; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  t.ok(isMounted(d.mnt), `mounted while running in the foreground ${output}`);
  t.equal(server.exitCode, null, 'the foreground process is the server');
  t.equal(fs.readFileSync(path.join(d.mnt, 'f'), 'utf8'), 'lower f', 'serves the lower');
  t.equal(run('umount', [d.mnt]).status, 0, 'umount works');
  const [code] = await exited;
  t.equal(code, 0, 'the server exits 0 after umount');
  t.equal(output, '', 'and printed nothing');

});
