#!/usr/bin/env node
/**
 * strata-overlay: mount a union filesystem, with fuse-overlayfs's command line.
 *
 *   strata-overlay [-f] [-d] -o lowerdir=L1:L2[,upperdir=U,workdir=W][,fsname=N] MOUNTPOINT
 *   strata-overlay SOURCE MOUNTPOINT -o rw,lowerdir=...     (the form mount.fuse3 uses)
 *
 * Without -f it exits 0 only once the mount is live, leaving the server in the background; every failure
 * before that point is one line on stderr, a non-zero exit and no mount. `umount MOUNTPOINT` ends it.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, type Logger } from '../log.js';
import { StrataError } from '../errors.js';
import { effectiveOptions, parseOptions, validateParams, type UnionParams } from '../union/params.js';
import { UnionFs } from '../union/super.js';
import { FuseMount, KernelFuseMount, isMountPoint, journalDescribesLiveConnection, type Mount } from '../fuse/mount.js';
import { sys } from '../native/index.js';
import { fuseDeviceAvailable } from '../fuse/kernel/device.js';

const PROGRAM = 'strata-overlay';
/** The environment variable that tells a background child which fd to report readiness on. */
const READY_FD_ENV = 'STRATA_OVERLAY_READY_FD';

interface CommandLine {
  /** The mount.fuse form's SOURCE, used as fsname unless -o fsname= says otherwise. */
  source?: string;
  foreground: boolean;
  debug: boolean;
  optionStrings: string[];
  mountpoint: string;
  help: boolean;
  version: boolean;
}

const USAGE = `usage: ${PROGRAM} [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,fsname=NAME] MOUNTPOINT
       ${PROGRAM} SOURCE MOUNTPOINT -o OPTIONS
`;

export function parseCommandLine(argv: string[]): CommandLine {
  const line: CommandLine = { foreground: false, debug: false, optionStrings: [], mountpoint: '', help: false, version: false };
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '-o') {
      const value = argv[++i];
      if (value === undefined) throw new StrataError('STRATA_BAD_OPTION', '-o needs an option list');
      line.optionStrings.push(value);
    } else if (arg.startsWith('-o')) {
      line.optionStrings.push(arg.slice(2));
    } else if (arg === '-f') {
      line.foreground = true;
    } else if (arg === '-d' || arg === '--debug') {
      line.debug = true;
      line.foreground = true;
    } else if (arg === '-s') {
      // libfuse's single-thread flag: accepted for compatibility, nothing to change.
    } else if (arg === '-h' || arg === '--help') {
      line.help = true;
    } else if (arg === '-V' || arg === '--version') {
      line.version = true;
    } else if (arg.startsWith('-') && arg !== '-') {
      throw new StrataError('STRATA_BAD_OPTION', `unknown argument "${arg}"`);
    } else {
      positional.push(arg);
    }
  }
  if (line.help || line.version) return line;
  if (positional.length === 0) throw new StrataError('STRATA_BAD_OPTION', 'missing MOUNTPOINT');
  if (positional.length > 2) throw new StrataError('STRATA_BAD_OPTION', `too many arguments: ${positional.join(' ')}`);
  line.mountpoint = positional[positional.length - 1] as string;
  if (positional.length === 2) line.source = positional[0];
  return line;
}

function checkMountpoint(mountpoint: string, resuming: boolean): string {
  if (resuming) {
    // The mount is live and served by nobody until this process starts reading: touching it would hang.
    if (!path.isAbsolute(mountpoint) || !isMountPoint(mountpoint)) {
      throw new StrataError('STRATA_BAD_DIR', `node_journal= describes a live connection, but "${mountpoint}" is not a mount point (give its absolute path)`);
    }
    return mountpoint;
  }
  let stat: fs.Stats;
  try {
    stat = fs.statSync(mountpoint);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTCONN') {
      throw new StrataError('STRATA_MOUNT_BUSY', `mountpoint "${mountpoint}" is a dead FUSE mount (Transport endpoint is not connected): run "umount ${mountpoint}" first`, { cause: err });
    }
    throw new StrataError('STRATA_BAD_DIR', `mountpoint "${mountpoint}" does not exist`, { cause: err });
  }
  if (!stat.isDirectory()) throw new StrataError('STRATA_BAD_DIR', `mountpoint "${mountpoint}" is not a directory`);
  const real = fs.realpathSync(mountpoint);
  if (isMountPoint(real)) throw new StrataError('STRATA_MOUNT_BUSY', `mountpoint "${mountpoint}" is busy: something is already mounted there`);
  return real;
}

/** Validates everything that can be validated before mounting, so failures leave nothing behind. */
function prepare(line: CommandLine): { params: UnionParams; mountpoint: string; resuming: boolean } {
  const parsed = parseOptions(line.optionStrings);
  if (line.source !== undefined && !parsed.fsnameGiven) parsed.fsname = line.source;
  // Without a name from the user, the mount source says which overlay options are in effect: FUSE has no
  // other place in /proc/mounts for them (kernel overlayfs lists them among the mount options).
  else if (!parsed.fsnameGiven) parsed.fsname = `${PROGRAM}:${effectiveOptions(parsed).join(',')}`;
  const params = validateParams(parsed);
  // A server given the fd and journal of a live connection takes it over instead of mounting (a restart).
  const resuming = params.fuseFd !== undefined && params.nodeJournal !== undefined && journalDescribesLiveConnection(params.nodeJournal);
  const mountpoint = checkMountpoint(line.mountpoint, resuming);
  for (const dir of [...params.lowerDirs, params.upperDir, params.workDir]) {
    if (dir !== undefined && (dir === mountpoint || dir.startsWith(`${mountpoint}/`))) {
      throw new StrataError('STRATA_BAD_DIR', `"${dir}" is inside the mountpoint "${mountpoint}"`);
    }
  }
  return { params, mountpoint, resuming };
}

/**
 * Keeps the server on one CPU (before libfuse starts its threads, which inherit it): every request hops
 * between a libfuse thread and the JS thread, and on a VM a wake-up on another vCPU costs an interrupt.
 * Measured here: 20k lstats through the mount took 58-79 us each pinned, 79-140 us unpinned. Without an
 * explicit cpu=, mounts spread over the CPUs by pid, so the daemon's per-mount servers use every core.
 */
function pinToCpu(cpu: number | 'any' | undefined, logger: Logger): void {
  if (cpu === 'any') return;
  const chosen = cpu ?? process.pid % os.availableParallelism();
  try {
    sys.pinThreadToCpu(chosen);
  } catch (err) {
    if (cpu !== undefined) throw new StrataError('STRATA_BAD_OPTION', `cannot keep the server on cpu ${cpu}: ${(err as Error).message}`, { cause: err });
    logger.warn({ cpu: chosen, err }, 'could not pin the server to a CPU');
  }
}

function reportReady(message: string): void {
  const fd = Number(process.env[READY_FD_ENV]);
  if (!Number.isInteger(fd) || fd <= 2) return;
  try {
    fs.writeSync(fd, `${message}\n`);
    fs.closeSync(fd);
  } catch {
    // the parent went away; nothing to tell
  }
}

/**
 * The kernel may cache names, negative names and attributes this long on the default transport: Strata is
 * the only writer of its upper layer and every change goes through the kernel or is invalidated explicitly.
 */
const KERNEL_CACHE_SECONDS = 86400 * 365;

function createMount(ufs: UnionFs, mountpoint: string, params: UnionParams, logger: Logger): Mount {
  let transport = params.transport;
  if (transport === 'kernel' && !params.transportGiven && !fuseDeviceAvailable()) {
    // A tree whose native addon was built before this transport existed: keep mounting, say how to fix it.
    // Not with nfs_export=on, which fuse-native cannot honour: refused rather than ignored.
    if (params.nfsExport) throw new StrataError('STRATA_BAD_OPTION', 'nfs_export=on needs transport=kernel, whose addon native/build/Release/strata_fuse.node is missing (run "bash scripts/setup.sh")');
    logger.warn('native/build/Release/strata_fuse.node is missing (run "bash scripts/setup.sh"): using transport=fuse-native');
    transport = 'fuse-native';
  }
  if (transport === 'fuse-native') {
    return new FuseMount(ufs, mountpoint, {
      fsname: params.fsname,
      subtype: PROGRAM,
      attrTimeout: params.attrTimeout ?? 1,
      entryTimeout: params.entryTimeout ?? 0,
      readOnly: params.readOnly,
      // As the default transport does: unset means the kernel's defaults for root (fuse/mount.ts limits them to root).
      suid: params.nosuid !== true,
      dev: params.nodev !== true,
    }, logger);
  }
  return new KernelFuseMount(ufs, mountpoint, {
    fsname: params.fsname,
    subtype: PROGRAM,
    attrTimeout: params.attrTimeout ?? KERNEL_CACHE_SECONDS,
    entryTimeout: params.entryTimeout ?? KERNEL_CACHE_SECONDS,
    readOnly: params.readOnly,
    passthrough: params.passthrough,
    nosuid: params.nosuid,
    nodev: params.nodev,
    noexec: params.noexec,
    deviceFd: params.fuseFd,
    journalPath: params.nodeJournal,
    exportSupport: params.nfsExport,
    // A fault hook for the restart tests only (session.ts dieBeforeReplyTo); not an option users set.
    dieBeforeReplyTo: process.env.STRATA_TEST_DIE_BEFORE_REPLY?.split(',').filter((name) => name !== ''),
  }, logger);
}

/** Serves the mount in this process until it is unmounted or signalled. */
async function serve(line: CommandLine): Promise<number> {
  const { params, mountpoint, resuming } = prepare(line);
  const level = line.debug ? 'debug' : params.logLevel;
  const logger: Logger = createLogger({ level, name: PROGRAM }).child({ mountpoint });
  process.umask(0); // modes arrive with the caller's umask applied already
  pinToCpu(params.cpu, logger);
  const ufs = new UnionFs(params, logger.child({ component: 'union' }));
  ufs.prepareWorkDir({ resuming });
  const fuse = createMount(ufs, mountpoint, params, logger);
  await fuse.mount();
  const started = fuse instanceof KernelFuseMount ? fuse.started : 'mounted';
  logger.info({ lowers: params.lowerDirs, upper: params.upperDir, readOnly: params.readOnly, options: effectiveOptions(params) }, started);
  reportReady(started === 'resumed' ? 'READY resumed' : 'READY');

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'unmounting on signal');
    fuse.unmount().catch((err: unknown) => logger.warn({ err }, 'unmount failed; the mount stays until "umount -l"'));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => stop('SIGHUP'));
  await fuse.waitUntilUnmounted();
  return 0;
}

/** Starts the server as a detached child and waits until it reports the mount live (or fails). */
function daemonize(argv: string[]): Promise<number> {
  const script = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, [script, '-f', ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  });
  return new Promise((resolve) => {
    let readyText = '';
    let errorText = '';
    let settled = false;
    const finish = (code: number, message?: string) => {
      if (settled) return;
      settled = true;
      if (message) process.stderr.write(message.endsWith('\n') ? message : `${message}\n`);
      if (code === 0) {
        child.stderr?.destroy();
        (child.stdio[3] as NodeJS.ReadableStream & { destroy(): void } | null)?.destroy();
        child.unref();
      }
      resolve(code);
    };
    child.stderr?.on('data', (chunk: Buffer) => {
      errorText += chunk.toString();
    });
    const readyPipe = child.stdio[3] as NodeJS.ReadableStream | null;
    readyPipe?.on('data', (chunk: Buffer) => {
      readyText += chunk.toString();
      if (readyText.includes('READY')) finish(0);
    });
    child.on('exit', (code) => {
      const lastLine = errorText.trim().split('\n').filter((l) => l.startsWith(`${PROGRAM}:`)).pop();
      finish(code === 0 ? 1 : (code ?? 1), lastLine ?? `${PROGRAM}: the server exited (code ${code}) before the mount was ready`);
    });
    child.on('error', (err) => finish(1, `${PROGRAM}: cannot start the server: ${err.message}`));
  });
}

async function main(argv: string[]): Promise<number> {
  const line = parseCommandLine(argv);
  if (line.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (line.version) {
    const pkgPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../package.json');
    const version = (JSON.parse(fs.readFileSync(pkgPath, 'utf8')) as { version: string }).version;
    process.stdout.write(`${PROGRAM} ${version}\n`);
    return 0;
  }
  if (line.foreground) return serve(line);
  // Validate in the parent too, so the common mistakes fail fast with the same message.
  prepare(line);
  return daemonize(argv);
}

main(process.argv.slice(2)).then(
  // Exit explicitly: fuse-native's handles and a detached child's pipes must not keep this process alive.
  (code) => process.exit(code),
  (err: unknown) => {
    const e = err as { message?: string; code?: string };
    process.stderr.write(`${PROGRAM}: ${e.message ?? String(err)}\n`);
    process.exit(err instanceof StrataError && err.code === 'STRATA_BAD_OPTION' ? 2 : 1);
  },
);
