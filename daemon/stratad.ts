#!/usr/bin/env node
/**
 * stratad: owns one state dir, mounts and supervises union mounts, and serves the control API.
 *
 * Start-up order matters: the state dir lock (LevelDB's LOCK, a kernel lock released when the process dies) is
 * taken before anything on disk is touched; mounts are reconciled before the socket accepts requests; systemd hears
 * READY=1 only when the API answers. Shutdown runs the same way backwards and exits 0.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { StrataError } from '../lib/errors.js';
import { createLogger, type Logger } from '../lib/log.js';
import { MountService } from '../lib/mounts/service.js';
import { LocalImageBackend, openImageServices } from '../lib/images/service.js';
import { StoreLayerProvider } from '../lib/images/layer-provider.js';
import { CommitService } from '../lib/images/commit-image.js';
import { LostAndFound } from '../lib/store/lost-found.js';
import { StoreMaintenance } from '../lib/store/maintenance.js';
import { Metastore, type WriteFaultHook } from '../lib/store/metastore.js';
import { VolumeService } from '../lib/volumes/service.js';
import { buildApi, listenOnSocket } from './api/server.js';
import { takeListenFds } from './activation.js';
import { JournalDestination, stderrIsJournal } from './journal.js';
import { applyReloadableSettings, loadConfig, type DaemonConfig } from './config.js';
import { SystemdNotifier } from './notify.js';
import { ServiceManagerLink } from './service-manager.js';

const VERSION = '0.1.0';

async function parseFlags(argv: string[]): Promise<{ flags: Partial<DaemonConfig>; configFile: string | undefined }> {
  const parsed = await yargs(argv)
    .scriptName('stratad')
    .usage('$0 [options]: the Strata daemon (flags override the config file, which overrides the defaults)')
    .option('config', { type: 'string', describe: 'JSON config file (default /etc/strata/stratad.json if it exists)' })
    .option('root', { type: 'string', describe: 'state dir (default /var/lib/strata)' })
    .option('socket', { type: 'string', describe: 'control API socket (default /run/strata/strata.sock)' })
    .option('socket-group', { type: 'string', describe: 'group allowed on the socket, if it exists (default strata)' })
    .option('mount-program', { type: 'string', describe: 'mount helper with fuse-overlayfs\'s command line (default: strata-overlay next to stratad)' })
    .option('log-level', { type: 'string', describe: 'fatal, error, warn, info, debug, trace or silent (default info)' })
    .strict()
    .version(VERSION)
    .help()
    .fail((message, error) => {
      if (error) throw error;
      throw new StrataError('STRATA_BAD_OPTION', `${message} (see stratad --help)`);
    })
    .parseAsync();
  return {
    configFile: parsed.config === undefined ? undefined : path.resolve(parsed.config),
    flags: { root: parsed.root, socket: parsed.socket, socketGroup: parsed['socket-group'], mountProgram: parsed['mount-program'], logLevel: parsed['log-level'] },
  };
}

/**
 * Test-only: STRATA_TEST_FAULTS names a file holding a number N. While the file exists, the next N metadata writes
 * succeed and every later one fails as a disk error would; removing the file ends the faults. Never set in service.
 */
function faultHookFromEnv(file: string | undefined, logger: Logger): WriteFaultHook | undefined {
  if (file === undefined || file === '') return undefined;
  logger.warn({ file }, 'STRATA_TEST_FAULTS is set: metadata writes fail on demand (tests only)');
  let armedWith: string | undefined;
  let remaining = 0;
  return () => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8').trim();
    } catch {
      armedWith = undefined;
      return undefined;
    }
    if (text !== armedWith) {
      armedWith = text;
      remaining = Number.parseInt(text, 10) || 0;
    }
    if (remaining > 0) {
      remaining -= 1;
      return undefined;
    }
    return Object.assign(new Error(`EIO: injected write failure (STRATA_TEST_FAULTS=${file})`), { code: 'EIO' });
  };
}

async function openStore(config: DaemonConfig, logger: Logger): Promise<Metastore> {
  const pidFile = path.join(config.root, 'stratad.pid');
  try {
    return await Metastore.open(path.join(config.root, 'db'), logger, { faults: faultHookFromEnv(process.env.STRATA_TEST_FAULTS, logger) });
  } catch (err) {
    if (err instanceof StrataError && err.code === 'STRATA_LOCKED') {
      const holder = (await readFile(pidFile, 'utf8').catch(() => '')).trim();
      throw new StrataError('STRATA_LOCKED', `state dir ${config.root} is in use by another stratad${holder ? ` (pid ${holder})` : ''} or a local strata command; stop it first or choose another --root`, { cause: err });
    }
    if (err instanceof StrataError && err.code === 'STRATA_STORE_ACCESS') {
      throw new StrataError('STRATA_STORE_ACCESS', `${err.message.replace(/; run as .*$/, '')}; stratad must run as a user that can read and write ${config.root}`, { cause: err });
    }
    throw err;
  }
}

async function run(argv: string[]): Promise<void> {
  const { flags, configFile } = await parseFlags(argv);
  const config = loadConfig(flags, configFile);
  const logger = createLogger({
    level: config.logLevel,
    name: 'stratad',
    destination: stderrIsJournal(process.env) ? new JournalDestination('stratad') : undefined,
  });
  const notifier = new SystemdNotifier(process.env.NOTIFY_SOCKET, logger);
  // Read (and removed from the environment) before any helper is spawned, so none inherits them.
  const activation = takeListenFds(process.env);
  if (activation !== undefined && activation.fds.length !== 1) {
    throw new StrataError('STRATA_BAD_OPTION', `socket activation passed ${activation.fds.length} sockets; stratad serves exactly one (ListenStream= in stratad.socket)`);
  }
  await notifier.status('opening state dir');

  await mkdir(config.root, { recursive: true, mode: 0o700 });
  const store = await openStore(config, logger);
  const pidFile = path.join(config.root, 'stratad.pid');
  await writeFile(pidFile, `${process.pid}\n`);

  let services;
  try {
    await notifier.status('recovering the layer store');
    services = await openImageServices(store, config.root, logger, { insecureRegistries: config.insecureRegistries });
    // References are derived from the image and mount records; a crash or a damaged log may have left them out
    // of step. Rebuilt before anything is mounted or can be removed.
    await services.layers.rebuildReferences();
  } catch (err) {
    await store.close();
    await rm(pidFile, { force: true });
    throw err;
  }
  // The daemon owns the metastore: it never calls this backend's close(), which would close the store under it.
  const images = new LocalImageBackend(store, services);
  const lostAndFound = new LostAndFound(config.root, logger);
  const volumes = new VolumeService(store, logger, { rootDir: config.root, lostAndFound });
  const mounts = new MountService(store, new StoreLayerProvider(services.images, services.layers), logger, {
    lostAndFound,
    rootDir: config.root,
    mountProgram: config.mountProgram,
    mountTimeoutMs: config.mountTimeoutMs,
    helperExitGraceMs: config.helperExitGraceMs,
    volumes,
    socket: config.socket,
    allowedTargets: config.allowedTargets,
    healthTimeoutMs: config.healthTimeoutMs,
    healthIntervalMs: config.healthIntervalMs,
    // Beside the socket (a tmpfs under /run by default): the journals are memory-mapped and rewritten constantly.
    sessionDir: path.join(path.dirname(config.socket), 'sessions'),
  });
  const maintenance = new StoreMaintenance(store, services.layers, mounts, lostAndFound, volumes);
  const commits = new CommitService(store, mounts, services.images, services.layers, logger);
  const api = buildApi({ config, mounts, images, maintenance, volumes, commits, version: VERSION, startedAt: new Date().toISOString() }, logger.child({ component: 'api' }));
  const serviceManager = new ServiceManagerLink(notifier, mounts, config.socket, logger);
  // Every request that may have changed a mount refreshes the status line at once; the periodic refresh catches
  // what changes without a request (a helper that dies and is restarted).
  api.addHook('onResponse', async (request) => {
    if (request.method !== 'GET' && request.url.startsWith('/mounts')) await serviceManager.refreshStatus();
  });

  let stopping: Promise<void> | undefined;
  const stop = (signal: string): Promise<void> => {
    stopping ??= (async () => {
      logger.info({ signal }, 'shutting down');
      serviceManager.stop();
      await notifier.stopping('unmounting');
      await api.close();
      await mounts.shutdown();
      await services.layers.stopBackgroundUnpack();
      await store.close();
      // A socket unit owns its socket and keeps it across our restarts.
      if (activation === undefined) await unlink(config.socket).catch(() => undefined);
      await rm(pidFile, { force: true });
      logger.info('stopped');
    })();
    return stopping;
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      stop(signal).then(() => process.exit(0), (err: unknown) => {
        logger.fatal({ err }, 'shutdown failed');
        process.exit(1);
      });
    });
  }

  try {
    await notifier.status('loading volumes');
    await volumes.init();
    await notifier.status('reconciling mounts');
    await mounts.reconcile();
    mounts.startHealthChecks();
    await listenOnSocket(api, config, logger, activation?.fds[0]);
  } catch (err) {
    await mounts.shutdown().catch(() => undefined);
    await store.close().catch(() => undefined);
    await rm(pidFile, { force: true });
    throw err;
  }
  const lost = await lostAndFound.listLost();
  if (lost.length > 0) {
    logger.warn({ entries: lost.map((e) => e.Path) }, `${lost.length} dir(s) without a record are kept in ${lostAndFound.dir}; look at them, then \`strata system prune --lost\` deletes them`);
  }
  const running = mounts.list().filter((m) => m.State.Running).length;
  logger.info({ root: config.root, socket: config.socket, mountProgram: config.mountProgram, mounts: running }, 'stratad ready');
  await notifier.ready(serviceManager.statusText());
  serviceManager.start(process.env);
  // Pulled layers are stored as blobs; extracting them now spares their first mount the wait.
  services.layers.startBackgroundUnpack();

  // SIGHUP (systemctl reload): re-read the config file and apply what can change without touching live mounts.
  // A bad file is refused whole and the running settings stay.
  let reloading = Promise.resolve();
  process.on('SIGHUP', () => {
    reloading = reloading.then(async () => {
      if (stopping !== undefined) return;
      await notifier.reloading('reloading configuration');
      try {
        const next = loadConfig(flags, configFile);
        const { applied, needRestart } = applyReloadableSettings(config, next);
        if (applied.includes('logLevel')) logger.level = config.logLevel;
        logger.info({ applied, needRestart, configFile: configFile ?? 'default' }, 'configuration reloaded');
        if (needRestart.length > 0) logger.warn({ settings: needRestart }, 'these settings changed but take effect only at the next start');
      } catch (err) {
        logger.error({ err }, 'reload refused: the configuration is invalid; keeping the running one');
      }
      await notifier.reloaded(serviceManager.statusText());
    });
  });
}

run(hideBin(process.argv)).catch((err: unknown) => {
  const e = err as { code?: string; message?: string };
  process.stderr.write(`stratad: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  process.exit(err instanceof StrataError && err.code === 'STRATA_BAD_OPTION' ? 2 : 1);
});
