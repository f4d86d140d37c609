/**
 * stratad's configuration: command-line flags over an optional JSON config file over the embedded defaults.
 * Everything is validated once, at start, and a bad value stops the daemon with one line naming the setting.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { StrataError } from '../lib/errors.js';
import { isLogLevel } from '../lib/log.js';

export interface DaemonConfig {
  /** State dir: LevelDB, layers, per-mount upper and work dirs. */
  root: string;
  /** Control API socket path. */
  socket: string;
  /** Group given access to the socket (mode 0660) if it exists; empty for root only. */
  socketGroup: string;
  /** The mount helper, with fuse-overlayfs's command line: an executable, or a .js file run with this Node. */
  mountProgram: string;
  logLevel: string;
  /** How long a helper may take to make its mount live. */
  mountTimeoutMs: number;
  /** How long a helper may take to exit after an unmount before it is signalled. */
  helperExitGraceMs: number;
  /** Registries (host or host:port) spoken to over plain HTTP; loopback always is (lib/registry/reference.ts). */
  insecureRegistries: string[];
  /**
   * Dirs under which mounts may be made (each dir and everything below it). Empty: any dir the built-in rules allow
   * (lib/mounts/targets.ts: no system paths, nothing in or over the state dir or the socket).
   */
  allowedTargets: string[];
  /** A mount whose helper answers nothing for this long is reported unhealthy. */
  healthTimeoutMs: number;
  /** How often each mount's helper is probed. */
  healthIntervalMs: number;
}

export const DEFAULT_CONFIG_FILE = '/etc/strata/stratad.json';

/** The strata-overlay shipped next to this daemon: dist/daemon/config.js -> dist/lib/cli/strata-overlay.js. */
export function defaultMountProgram(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../lib/cli/strata-overlay.js');
}

export function defaultConfig(): DaemonConfig {
  return {
    root: '/var/lib/strata',
    socket: '/run/strata/strata.sock',
    socketGroup: 'strata',
    mountProgram: defaultMountProgram(),
    logLevel: 'info',
    mountTimeoutMs: 30_000,
    helperExitGraceMs: 3_000,
    insecureRegistries: [],
    allowedTargets: [],
    healthTimeoutMs: 10_000,
    healthIntervalMs: 5_000,
  };
}

type Key = keyof DaemonConfig;
const KINDS: Record<Key, 'path' | 'paths' | 'string' | 'level' | 'ms' | 'hosts'> = {
  root: 'path',
  socket: 'path',
  socketGroup: 'string',
  mountProgram: 'path',
  logLevel: 'level',
  mountTimeoutMs: 'ms',
  helperExitGraceMs: 'ms',
  insecureRegistries: 'hosts',
  allowedTargets: 'paths',
  healthTimeoutMs: 'ms',
  healthIntervalMs: 'ms',
};

function bad(message: string): StrataError {
  return new StrataError('STRATA_BAD_OPTION', message);
}

function checkValue(key: Key, value: unknown, origin: string): string | number | string[] {
  const kind = KINDS[key];
  if (kind === 'hosts') {
    if (!Array.isArray(value) || !value.every((h) => typeof h === 'string' && /^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$/.test(h))) {
      throw bad(`${origin}: ${key} must be a list of registry hosts ("host" or "host:port"), got ${JSON.stringify(value)}`);
    }
    return value as string[];
  }
  if (kind === 'paths') {
    if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || !path.isAbsolute(v) || path.resolve(v) === '/')) {
      throw bad(`${origin}: ${key} must be a list of absolute directory paths other than "/", got ${JSON.stringify(value)}`);
    }
    return (value as string[]).map((v) => path.resolve(v));
  }
  if (kind === 'ms') {
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || value > 3_600_000) {
      throw bad(`${origin}: ${key} must be a whole number of milliseconds between 1 and 3600000, got ${JSON.stringify(value)}`);
    }
    return value;
  }
  if (typeof value !== 'string') throw bad(`${origin}: ${key} must be a string, got ${JSON.stringify(value)}`);
  if (kind === 'path' && !path.isAbsolute(value)) throw bad(`${origin}: ${key} must be an absolute path, got "${value}"`);
  if (kind === 'level' && !isLogLevel(value)) throw bad(`${origin}: ${key} must be one of fatal, error, warn, info, debug, trace, silent; got "${value}"`);
  if (kind === 'string' && value !== '' && !/^[a-z_][a-z0-9_-]*\$?$/i.test(value)) throw bad(`${origin}: ${key} "${value}" is not a valid group name`);
  return value;
}

function readConfigFile(file: string): Partial<DaemonConfig> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new StrataError('STRATA_BAD_OPTION', `config file ${file} is not readable JSON: ${(err as Error).message}`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw bad(`config file ${file} must hold a JSON object`);
  const result: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (!(key in KINDS)) throw bad(`config file ${file}: unknown setting "${key}" (known: ${Object.keys(KINDS).join(', ')})`);
    result[key] = checkValue(key as Key, value, `config file ${file}`);
  }
  return result as Partial<DaemonConfig>;
}

/**
 * Merges the layers. `configFile` undefined means the default file, used only if it exists; an explicit file must exist.
 * Relative paths on the command line are resolved against the working directory.
 */
export function loadConfig(flags: Partial<Record<Key, unknown>>, configFile: string | undefined): DaemonConfig {
  const file = configFile ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
  if (configFile !== undefined && !existsSync(configFile)) throw bad(`config file ${configFile} does not exist`);
  const fromFile = file === undefined ? {} : readConfigFile(file);
  const fromFlags: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(flags)) {
    if (value === undefined) continue;
    const resolved = KINDS[key as Key] === 'path' && typeof value === 'string' && value !== '' ? path.resolve(value) : value;
    fromFlags[key] = checkValue(key as Key, resolved, `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  }
  const config = { ...defaultConfig(), ...fromFile, ...fromFlags };
  if (config.socket.startsWith(`${config.root}/`)) {
    // Allowed, but keep the socket out of the dirs the daemon cleans.
    if (config.socket.startsWith(path.join(config.root, 'mounts'))) throw bad(`socket ${config.socket} must not be inside ${config.root}/mounts`);
  }
  return config;
}

/**
 * Settings a reload (SIGHUP) applies to the running daemon. Everything else (state dir, socket, helper program,
 * timeouts) is bound to live objects at start and only takes effect at the next start.
 */
export const RELOADABLE_SETTINGS: readonly string[] = ['logLevel', 'allowedTargets', 'insecureRegistries'];

/**
 * Copies the reloadable settings of `next` into the live `config` (services read them from that object or hold
 * its lists, which are updated in place), and names the other settings that differ. `next` must come from loadConfig, so it is already validated.
 */
export function applyReloadableSettings(config: DaemonConfig, next: DaemonConfig): { applied: string[]; needRestart: string[] } {
  const applied: string[] = [];
  const needRestart: string[] = [];
  const live = config as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(next)) {
    if (JSON.stringify(live[key]) === JSON.stringify(value)) continue;
    if (RELOADABLE_SETTINGS.includes(key)) {
      // Lists are changed in place: services hold the array they were given at start, not the config object.
      const current = live[key];
      if (Array.isArray(current) && Array.isArray(value)) current.splice(0, current.length, ...(value as unknown[]));
      else live[key] = value;
      applied.push(key);
    } else {
      needRestart.push(key);
    }
  }
  return { applied, needRestart };
}
