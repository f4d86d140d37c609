/**
 * stratad under a real systemd (PID 1 of its own namespaces, booted over a cached Debian root; see
 * helpers/systemd-root.ts): the units that scripts/install.sh installs, socket activation on the first `strata`
 * command, readiness, a STATUS= line that follows the mounts, journal fields per mount, reload keeping mounts (and
 * refusing a bad config), the watchdog restarting a stopped daemon whose restart reconciles the mounts, and stop
 * unmounting everything.
 */
import t from 'tap';
import { repoRoot } from './helpers/build.js';
import { bootSystemd, waitUntil, type BootedSystemd } from './helpers/systemd-root.js';

const SOCKET = '/run/strata/strata.sock';

function journal(sys: BootedSystemd, ...filters: string[]): Array<Record<string, string>> {
  const out = sys.exec('journalctl', ['-u', 'stratad', '-o', 'json', '--no-pager', ...filters]).stdout;
  return out.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, string>);
}

/** The last journal entry of stratad whose message starts with `prefix`. */
function lastLogged(sys: BootedSystemd, prefix: string): Record<string, string> | undefined {
  return journal(sys).filter((e) => typeof e.MESSAGE === 'string' && e.MESSAGE.startsWith(prefix)).at(-1);
}

/** What systemd and the journal say about stratad, for a failure message. */
function diagnose(sys: BootedSystemd): string {
  return [sys.exec('systemctl', ['status', '--no-pager', '-n', '0', 'stratad.service']).stdout,
    sys.exec('journalctl', ['--no-pager', '-n', '60', '-o', 'short-monotonic']).stdout].join('\n');
}

function strata(sys: BootedSystemd, ...args: string[]): string {
  return sys.must('/usr/local/bin/strata', ['--socket', SOCKET, ...args], { timeoutMs: 90_000 });
}

function fuseMounts(sys: BootedSystemd): string[] {
  return sys.must('cat', ['/proc/self/mounts']).split('\n').filter((l) => / fuse(\.[^ ]*)? /.test(l));
}

t.test('stratad as a systemd service', async (t) => {
  const sys = await bootSystemd(t, 'service');
  sys.must('bash', [`${repoRoot}/scripts/install.sh`]);
  // A short watchdog so the test sees it fire; everything else is the shipped unit.
  sys.writeFile('/etc/systemd/system/stratad.service.d/test.conf', '[Service]\nWatchdogSec=6s\nTimeoutAbortSec=3s\n');
  sys.must('systemctl', ['daemon-reload']);
  t.match(sys.exec('systemd-analyze', ['verify', 'stratad.service', 'stratad.socket']).stderr, /^(?!.*stratad)/s, 'the installed units verify cleanly');

  await t.test('socket activation: the first strata command starts the daemon', async (t) => {
    sys.must('systemctl', ['start', 'stratad.socket']);
    t.equal(sys.show('stratad.service', 'ActiveState'), 'inactive', 'the service is not running before the first request');
    t.equal(sys.must('stat', ['-c', '%a %U %G %F', SOCKET]).trim(), '660 root strata socket', 'the socket unit made the socket 0660 root:strata');
    const info = JSON.parse(strata(sys, 'info', '--json')) as Record<string, unknown>;
    t.ok(info, 'strata info answered through the activated socket');
    t.equal(sys.show('stratad.service', 'ActiveState'), 'active', 'the request started the service');
    t.match(sys.show('stratad.service', 'StatusText'), /^serving \/run\/strata\/strata\.sock; 0 mount\(s\) live$/, 'STATUS= says what it serves');
  });

  await t.test('systemctl restart returns only once the daemon is ready', async (t) => {
    const before = sys.show('stratad.service', 'MainPID');
    sys.must('systemctl', ['restart', 'stratad.service']);
    t.not(sys.show('stratad.service', 'MainPID'), before, 'a new main process');
    t.equal(sys.show('stratad.service', 'ActiveState'), 'active');
    t.match(sys.show('stratad.service', 'StatusText'), /^serving /, 'READY=1 with its status came before systemctl returned');
  });

  let helperPid = '';
  await t.test('STATUS= follows mount create and remove; the journal has per-mount fields', async (t) => {
    sys.must('sh', ['-c', 'mkdir -p /srv/lower /mnt/web && echo hello > /srv/lower/greeting']);
    strata(sys, 'mount', 'create', '/srv/lower', '--target', '/mnt/web', '--name', 'web');
    await waitUntil('STATUS= to count the new mount', () => (/; 1 mount\(s\) live/.test(sys.show('stratad.service', 'StatusText')) ? true : undefined));
    t.pass('STATUS= counts the new mount');
    t.equal(sys.must('cat', ['/mnt/web/greeting']), 'hello\n', 'the mount serves the lower');
    const lines = journal(sys, 'MOUNT=web');
    t.ok(lines.length > 0, 'journalctl -u stratad MOUNT=web finds the mount\'s lines');
    t.ok(lines.every((l) => l.MOUNT === 'web' && typeof l.MOUNT_ID === 'string' && l.MOUNT_ID !== ''), 'each carries MOUNT and MOUNT_ID fields');
    t.ok(lines.every((l) => typeof l.STRATA_JSON === 'string' && (JSON.parse(l.STRATA_JSON) as { mount?: string }).mount === 'web'), 'and the whole JSON line');
    const inspect = JSON.parse(strata(sys, 'mount', 'inspect', 'web')) as Array<{ State: { Pid: number } }>;
    helperPid = String(inspect[0]!.State.Pid);
    t.not(helperPid, '0', 'a helper serves the mount');

    sys.must('sh', ['-c', 'mkdir -p /srv/other /mnt/other']);
    strata(sys, 'mount', 'create', '/srv/other', '--target', '/mnt/other', '--name', 'other');
    await waitUntil('STATUS= to count two mounts', () => (/; 2 mount\(s\) live/.test(sys.show('stratad.service', 'StatusText')) ? true : undefined));
    strata(sys, 'mount', 'rm', 'other');
    await waitUntil('STATUS= to drop the removed mount', () => (/; 1 mount\(s\) live/.test(sys.show('stratad.service', 'StatusText')) ? true : undefined));
    t.pass('STATUS= follows a create and a remove');
  });

  await t.test('reload re-reads the config without touching live mounts; a bad config is refused', async (t) => {
    const mainPid = sys.show('stratad.service', 'MainPID');
    sys.writeFile('/etc/strata/stratad.json', JSON.stringify({ logLevel: 'debug' }));
    sys.must('systemctl', ['reload', 'stratad.service']);
    const reloaded = await waitUntil('the reload to be logged', () => lastLogged(sys, 'configuration reloaded'));
    t.match(JSON.parse(reloaded.STRATA_JSON!), { applied: ['logLevel'] }, 'the new log level was applied');
    t.equal(sys.show('stratad.service', 'MainPID'), mainPid, 'the daemon was not restarted');
    const inspect = JSON.parse(strata(sys, 'mount', 'inspect', 'web')) as Array<{ State: { Pid: number; Running: boolean } }>;
    t.equal(String(inspect[0]!.State.Pid), helperPid, 'the mount kept its helper');
    t.equal(sys.must('cat', ['/mnt/web/greeting']), 'hello\n', 'and still serves');

    sys.writeFile('/etc/strata/stratad.json', '{ "logLevel": "loud" }');
    sys.must('systemctl', ['reload', 'stratad.service']);
    const refused = await waitUntil('the refusal to be logged', () => lastLogged(sys, 'reload refused: the configuration is invalid; keeping the running one'));
    t.match(refused.MESSAGE, /logLevel must be one of/, 'the journal says what was wrong');
    t.equal(sys.show('stratad.service', 'ActiveState'), 'active', 'the daemon keeps running on the old config');
    t.equal(sys.show('stratad.service', 'MainPID'), mainPid);
    sys.writeFile('/etc/strata/stratad.json', '{}');
  });

  await t.test('the watchdog restarts a stopped daemon, and the restart reconciles the mount', async (t) => {
    const mainPid = sys.show('stratad.service', 'MainPID');
    const restartsBefore = Number(sys.show('stratad.service', 'NRestarts'));
    sys.must('kill', ['-STOP', mainPid]);
    await waitUntil('systemd to restart the stopped daemon', () => {
      const pid = sys.show('stratad.service', 'MainPID');
      return pid !== mainPid && pid !== '0' && sys.show('stratad.service', 'ActiveState') === 'active' ? pid : undefined;
    }, 90_000, () => diagnose(sys));
    t.ok(Number(sys.show('stratad.service', 'NRestarts')) > restartsBefore, 'systemd counted a restart');
    t.match(sys.exec('journalctl', ['-u', 'stratad', '--no-pager']).stdout, /[Ww]atchdog timeout/, 'the journal names the watchdog');
    await waitUntil('the mount to be live again', () => (sys.exec('cat', ['/mnt/web/greeting']).stdout === 'hello\n' ? true : undefined), 60_000, () => diagnose(sys));
    t.pass('the restarted daemon brought the mount back');
  });

  await t.test('systemctl stop unmounts everything', async (t) => {
    t.ok(fuseMounts(sys).length > 0, 'a FUSE mount is live before stop');
    sys.must('systemctl', ['stop', 'stratad.service']);
    t.same(fuseMounts(sys), [], 'no FUSE mount is left after stop');
    // PartOf=stratad.service, as docker.socket: stopping the daemon stops its socket, so nothing starts it again
    // behind the administrator's back.
    t.equal(sys.show('stratad.socket', 'ActiveState'), 'inactive', 'the socket unit stopped with the service');
    t.equal(sys.show('stratad.service', 'ActiveState'), 'inactive');
  });
});
