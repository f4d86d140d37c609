/**
 * File handles of the merged mount (issue 12 §6): name_to_handle_at + open_by_handle_at, what NFS export,
 * fanotify users and backup tools rely on.
 *
 * Kernel overlayfs mounted with nfs_export=on (and redirect_dir=on,index=on) is the oracle: the same scenario
 * runs on it and on strata with nfs_export=on, and each records, per handle, what opening it gives (the content
 * or listing, or the errno). The records must be equal, and a few outcomes are asserted outright so that two
 * equally broken implementations cannot pass. Cases: a lower file, an upper file, a lower file copied up after
 * its handle was taken, a directory, files and dirs renamed after, a removed file (ESTALE), and every kind again
 * after `echo 3 > /proc/sys/vm/drop_caches`, when the kernel no longer caches the inode and the handle must be
 * resolved by the server (FUSE: LOOKUP(node, "."), and ".." to reconnect a directory).
 *
 * Without nfs_export both refuse name_to_handle_at (EOPNOTSUPP). Option handling is checked against the kernel's
 * (nfs_export=on,index=off is refused by both). The fuse-native transport (libfuse 2's path API) cannot look a
 * node up by id: nfs_export=on is refused there, and its default answer is asserted as what it is.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { sys } from '../../lib/native/index.js';
import { NodeTable } from '../../lib/fuse/kernel/nodes.js';
import { candidateKind, requireCandidate, run, Sandbox, strataOverlayJs, strataTransportName, type MountedOverlay, type OverlayKind } from '../helpers/sandbox.js';

requireCandidate('strata');
const transport = strataTransportName();
const O_RDONLY = fs.constants.O_RDONLY;
const O_DIRECTORY = fs.constants.O_DIRECTORY;

if (candidateKind() !== 'strata') throw new Error('file-handles.test.ts compares strata (STRATA_TEST_CANDIDATE=strata) with the kernel');

function fillLower(lower: string): void {
  const w = (rel: string, data: string) => {
    fs.mkdirSync(path.dirname(path.join(lower, rel)), { recursive: true });
    fs.writeFileSync(path.join(lower, rel), data);
  };
  w('lower-file', 'lower\n');
  w('copy-up', 'before copy-up\n');
  w('renamed-lower', 'renamed lower\n');
  w('removed-lower', 'removed\n');
  w('dir/a', 'a\n');
  w('dir/sub/b', 'b\n');
  w('moved-dir/inside', 'inside\n');
  w('cold/file', 'cold\n');
  w('cold/deep/er/file', 'deeper\n');
  w('cold/copy-up', 'cold before\n');
  w('cold/renamed', 'cold renamed\n');
  w('cold/removed', 'cold removed\n');
  w('cold-moved/x', 'x\n');
}

interface Handle {
  type: number;
  handle: Buffer;
}

interface Run {
  kind: OverlayKind;
  m: MountedOverlay;
  /** label -> outcome, in the order taken */
  seen: string[];
}

function errCode(err: unknown): string {
  return `ERR:${(err as { code?: string }).code ?? String(err)}`;
}

function dropCaches(): void {
  run('sync', []);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** What opening `h` gives: a file's content, a dir's sorted listing, or the errno. Also checks st_ino. */
function openOutcome(mountFd: number, h: Handle, expectPath: string | undefined): string {
  let fd: number;
  try {
    fd = sys.openByHandle(mountFd, h.type, h.handle, O_RDONLY);
  } catch (err) {
    return errCode(err);
  }
  try {
    const st = fs.fstatSync(fd);
    let what: string;
    if (st.isDirectory()) what = `dir[${fs.readdirSync(`/proc/self/fd/${fd}`).sort().join(',')}]`;
    else what = `file[${fs.readFileSync(fd, 'utf8').trimEnd()}]`;
    // The inode reached by handle is the one the path has now (same st_ino as a stat by name).
    if (expectPath !== undefined) {
      const byName = fs.lstatSync(expectPath);
      what += byName.ino === st.ino && byName.dev === st.dev ? ' same-inode' : ` OTHER-INODE(${st.ino} vs ${byName.ino})`;
    }
    return what;
  } finally {
    fs.closeSync(fd);
  }
}

async function scenario(tt: Test, box: Sandbox, kind: OverlayKind): Promise<Run> {
  const base = box.dir(kind);
  const lower = path.join(base, 'lower');
  fs.mkdirSync(lower);
  fillLower(lower);
  const m = box.mount(kind, { lowers: [lower], upper: box.dir(`${kind}/upper`), work: box.dir(`${kind}/work`), mnt: box.dir(`${kind}/mnt`) }, ['nfs_export=on']);
  const seen: string[] = [];
  const p = (rel: string) => path.join(m.mnt, rel);
  const mountFd = fs.openSync(m.mnt, O_RDONLY | O_DIRECTORY);
  tt.teardown(() => fs.closeSync(mountFd));
  const handles = new Map<string, Handle>();
  const take = (label: string, rel: string) => {
    try {
      handles.set(label, sys.nameToHandle(p(rel)));
      seen.push(`${label}: handle`);
    } catch (err) {
      seen.push(`${label}: handle ${errCode(err)}`);
    }
  };
  const open = (label: string, rel: string | undefined) => {
    const h = handles.get(label);
    seen.push(`${label}: ${h === undefined ? 'no handle' : openOutcome(mountFd, h, rel === undefined ? undefined : p(rel))}`);
  };

  // Warm: the kernel still caches every inode.
  fs.writeFileSync(p('upper-file'), 'upper\n');
  fs.writeFileSync(p('removed-upper'), 'gone\n');
  take('lower file', 'lower-file');
  take('upper file', 'upper-file');
  take('copy-up', 'copy-up');
  take('dir', 'dir');
  take('nested file', 'dir/sub/b');
  take('renamed lower', 'renamed-lower');
  take('renamed upper', 'upper-file');
  take('moved dir', 'moved-dir');
  take('removed lower', 'removed-lower');
  take('removed upper', 'removed-upper');
  open('lower file', 'lower-file');
  open('upper file', 'upper-file');
  fs.appendFileSync(p('copy-up'), 'after copy-up\n');
  open('copy-up', 'copy-up');
  open('dir', 'dir');
  open('nested file', 'dir/sub/b');
  fs.renameSync(p('renamed-lower'), p('renamed-lower.2'));
  open('renamed lower', 'renamed-lower.2');
  fs.renameSync(p('upper-file'), p('upper-file.2'));
  open('renamed upper', 'upper-file.2');
  fs.renameSync(p('moved-dir'), p('dir/moved-dir.2'));
  open('moved dir', 'dir/moved-dir.2');
  fs.unlinkSync(p('removed-lower'));
  fs.unlinkSync(p('removed-upper'));
  open('removed lower', undefined);
  open('removed upper', undefined);

  // Cold: handles taken, then the kernel drops every inode it can; changes made while they are not cached.
  fs.writeFileSync(p('cold/upper'), 'cold upper\n');
  take('cold file', 'cold/file');
  take('cold upper', 'cold/upper');
  take('cold deep file', 'cold/deep/er/file');
  take('cold dir', 'cold/deep');
  take('cold copy-up', 'cold/copy-up');
  take('cold renamed', 'cold/renamed');
  take('cold removed', 'cold/removed');
  take('cold in moved dir', 'cold-moved/x');
  take('cold moved dir', 'cold-moved');
  dropCaches();
  fs.appendFileSync(p('cold/copy-up'), 'cold after\n');
  fs.renameSync(p('cold/renamed'), p('cold/renamed.2'));
  fs.unlinkSync(p('cold/removed'));
  fs.renameSync(p('cold-moved'), p('cold/moved.2'));
  dropCaches();
  open('cold file', 'cold/file');
  open('cold upper', 'cold/upper');
  open('cold deep file', 'cold/deep/er/file');
  open('cold dir', 'cold/deep');
  open('cold copy-up', 'cold/copy-up');
  open('cold renamed', 'cold/renamed.2');
  open('cold removed', undefined);
  open('cold in moved dir', 'cold/moved.2/x');
  open('cold moved dir', 'cold/moved.2');
  // A dir reached by handle while uncached is reconnected to its name (the kernel's ".." lookups).
  dropCaches();
  const dirHandle = handles.get('cold dir');
  if (dirHandle !== undefined) {
    try {
      const fd = sys.openByHandle(mountFd, dirHandle.type, dirHandle.handle, O_RDONLY | O_DIRECTORY);
      seen.push(`cold dir path: ${fs.readlinkSync(`/proc/self/fd/${fd}`).split(m.mnt).join('<mnt>')}`);
      fs.closeSync(fd);
    } catch (err) {
      seen.push(`cold dir path: ${errCode(err)}`);
    }
  }
  // The same handle, opened again with the inode cached now.
  open('cold file', 'cold/file');
  return { kind, m, seen };
}

t.test('handles round-trip as on kernel overlayfs with nfs_export=on', async (tt) => {
  const box = await Sandbox.create(tt, 'file-handles');
  const kernel = await scenario(tt, box, 'kernel');
  box.unmount(kernel.m);
  tt.comment(`kernel: ${kernel.seen.join(' | ')}`);
  tt.same(kernel.seen.filter((s) => s.includes('removed') && !s.endsWith(': handle')), ['removed lower: ERR:ESTALE', 'removed upper: ERR:ESTALE', 'cold removed: ERR:ESTALE'], 'the oracle: removed files are ESTALE');
  tt.ok(kernel.seen.includes('cold deep file: file[deeper] same-inode'), 'the oracle decodes uncached handles');
  if (transport === 'fuse-native') {
    const r = run(process.execPath, [strataOverlayJs, '-o', `lowerdir=${box.dir('l')},upperdir=${box.dir('u')},workdir=${box.dir('w')},transport=fuse-native,nfs_export=on`, box.dir('m')]);
    tt.not(r.status, 0, 'fuse-native refuses nfs_export=on');
    tt.match(r.stderr, /nfs_export=on works only with transport=kernel/);
    return;
  }
  const strata = await scenario(tt, box, 'strata');
  box.unmount(strata.m);
  tt.same(strata.seen, kernel.seen, `strata (${transport}) opens by handle what the kernel opens`);
  tt.ok(strata.seen.includes('copy-up: file[before copy-up\nafter copy-up] same-inode'), 'a handle taken before copy-up opens the copied-up file');
  tt.ok(strata.seen.includes('cold copy-up: file[cold before\ncold after] same-inode'), 'also when the inode was evicted across the copy-up');
  tt.ok(strata.seen.includes('cold removed: ERR:ESTALE'), 'a removed file is ESTALE, never another file');
});

t.test('without nfs_export name_to_handle_at is refused, as on the kernel', async (tt) => {
  const box = await Sandbox.create(tt, 'file-handles-off');
  const outcome = (kind: OverlayKind): string[] => {
    const lower = box.dir(`${kind}/lower`);
    fs.writeFileSync(path.join(lower, 'f'), 'f\n');
    fs.mkdirSync(path.join(lower, 'd'));
    const m = box.mount(kind, { lowers: [lower], upper: box.dir(`${kind}/upper`), work: box.dir(`${kind}/work`), mnt: box.dir(`${kind}/mnt`) });
    const seen = ['f', 'd'].map((rel) => {
      try {
        sys.nameToHandle(path.join(m.mnt, rel));
        return `${rel}: handle`;
      } catch (err) {
        return `${rel}: ${errCode(err)}`;
      }
    });
    box.unmount(m);
    return seen;
  };
  const kernel = outcome('kernel');
  tt.same(kernel, ['f: ERR:EOPNOTSUPP', 'd: ERR:EOPNOTSUPP'], 'the oracle refuses');
  const strata = outcome('strata');
  if (transport === 'fuse-native') {
    // libfuse 2 negotiates neither FUSE_EXPORT_SUPPORT nor FUSE_NO_EXPORT_SUPPORT: the kernel encodes handles,
    // which decode only while it caches the inode. Documented in docs/union.md; not the kernel's answer.
    tt.todo('fuse-native: name_to_handle_at is refused as on the kernel', (t2) => {
      t2.same(strata, kernel);
      t2.end();
    });
    return;
  }
  tt.same(strata, kernel, `strata (${transport}) refuses as the kernel does`);
});

t.test('nfs_export options are accepted and refused as on the kernel', async (tt) => {
  const box = await Sandbox.create(tt, 'file-handles-opts');
  const lower = box.dir('lower');
  const tryMount = (kind: OverlayKind, i: number, options: string[]): string => {
    const dirs = { lowers: [lower], upper: box.dir(`${kind}${i}/u`), work: box.dir(`${kind}${i}/w`), mnt: box.dir(`${kind}${i}/m`) };
    try {
      const m = box.mount(kind, dirs, options);
      box.unmount(m);
      return 'mounted';
    } catch (err) {
      return `refused: ${(err as Error).message.split(': ').slice(1).join(': ')}`;
    }
  };
  const cases: string[][] = [['nfs_export=on'], ['nfs_export=off'], ['nfs_export=on', 'index=off'], ['index=off', 'nfs_export=on'], ['nfs_export=on', 'index=on']];
  cases.forEach((options, i) => {
    const k = tryMount('kernel', i, options);
    const s = tryMount('strata', i, options);
    const label = options.join(',');
    if (transport === 'fuse-native' && options.includes('nfs_export=on')) {
      // Refused either way: the index conflict is reported first when there is one.
      tt.match(s, /^refused: .*(nfs_export=on works only with transport=kernel|conflicting options: nfs_export=on,index=off)/, `${label}: fuse-native refuses`);
    } else {
      tt.equal(s.startsWith('refused'), k.startsWith('refused'), `${label}: kernel ${k.slice(0, 40)}, strata ${s}`);
    }
    if (label.includes('index=off') && label.includes('nfs_export=on') && transport !== 'fuse-native') tt.match(s, /conflicting options: nfs_export=on,index=off/);
  });
  const bad = run(process.execPath, [strataOverlayJs, '-o', `lowerdir=${lower},nfs_export=yes`, box.dir('bad')]);
  tt.not(bad.status, 0, 'nfs_export=yes is refused');
  tt.match(bad.stderr, /nfs_export= must be on or off/);
});

t.test('the node table retains forgotten nodes within its bound, and never revives one for another inode', (tt) => {
  const table = new NodeTable(7, 0o040000, 2);
  const REG = 0o100000;
  const a = table.lookedUp(table.root, 'a', 100, REG);
  const b = table.lookedUp(table.root, 'b', 101, REG);
  const c = table.lookedUp(table.root, 'c', 102, REG);
  const d = table.lookedUp(table.root, 'd', 103, REG);
  table.removeAlias(table.root, 'd');
  for (const node of [a, b, c, d]) table.forget(node.id, 1);
  tt.equal(table.size, 1, 'only the root is live');
  tt.equal(table.known(a.id), undefined, 'the oldest is dropped past the bound');
  tt.equal(table.known(d.id), undefined, 'a removed node is not retained');
  tt.equal(table.known(b.id), b, 'b is retained');
  tt.equal(table.lookedUp(table.root, 'b', 101, REG).id, b.id, 'a lookup of the same inode revives its id');
  tt.equal(table.get(b.id)?.nlookup, 1, 'and counts one lookup');
  const c2 = table.lookedUp(table.root, 'c', 999, REG);
  tt.not(c2.id, c.id, 'another inode under the name gets a new id');
  tt.equal(table.known(c.id), undefined, 'and the old node, nameless now, is dropped');
  // A dir renamed while its child is retained: the child follows (its path is what a handle is checked against).
  const dir = table.lookedUp(table.root, 'dir', 200, 0o040000);
  const x = table.lookedUp(dir, 'x', 201, REG);
  table.forget(x.id, 1);
  table.renamed(table.root, 'dir', table.root, 'dir2');
  tt.equal(table.known(x.id)?.path(), '/dir2/x', 'a retained node follows its parent\'s rename');
  table.lookedUpNode(x);
  tt.equal(table.get(x.id)?.nlookup, 1, 'LOOKUP "." revives it with one lookup');
  tt.end();
});
