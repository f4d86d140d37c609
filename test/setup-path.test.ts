/**
 * After scripts/setup.sh (which `npm test`, and so CI, runs before the suite), the commands the README uses are on
 * PATH: `strata` and `stratad` in /usr/local/bin, the mount helper `strata-overlay` in /usr/local/sbin. Each is a
 * wrapper that runs a checkout's dist/ with an absolute node. Which checkout is not asserted: the wrappers point at
 * the tree that ran set-up last (on CI, the CI checkout), not necessarily this one.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import t from 'tap';

const commands = [
  { name: 'strata', script: 'dist/lib/cli/strata.js', usage: /^strata <command> \[options\]/ },
  { name: 'stratad', script: 'dist/daemon/stratad.js', usage: /^stratad \[options\]/ },
  { name: 'strata-overlay', script: 'dist/lib/cli/strata-overlay.js', usage: /^usage: strata-overlay / },
];

for (const { name, script, usage } of commands) {
  t.test(`${name} is on PATH after set-up`, async (tt) => {
    // Through a shell, as a user types it: `command -v` resolves with the shell's PATH lookup.
    const found = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
    const where = found.stdout.trim();
    tt.equal(found.status, 0, `command -v ${name} finds it (run scripts/setup.sh; PATH=${process.env.PATH})`);
    if (found.status !== 0) return;

    const wrapper = fs.readFileSync(where, 'utf8');
    const target = /^#!\/bin\/sh\nexec (\/\S+) (\/\S+) "\$@"\n$/.exec(wrapper);
    tt.ok(target, `${where} is set-up's wrapper: absolute node, absolute script`);
    if (target) {
      tt.ok(target[2]!.endsWith(`/${script}`), `it runs ${script} of a checkout (${target[2]})`);
      tt.ok(fs.existsSync(target[1]!) && fs.existsSync(target[2]!), 'node and the script it names exist');
    }

    const help = spawnSync('sh', ['-c', `${name} --help 2>&1`], { encoding: 'utf8', timeout: 30_000 });
    tt.equal(help.status, 0, `${name} --help exits 0: ${help.stdout}`);
    tt.match(help.stdout, usage, 'and prints its usage');
  });
}
