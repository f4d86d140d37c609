/**
 * Mount parameters: parsing of the `-o` option string and validation of the directories, in the spirit of
 * fs/overlayfs/params.c. Everything here runs before anything is mounted, so a bad option never leaves a
 * half-made mount behind.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StrataError } from '../errors.js';

export interface UnionParams {
  /** Lower dirs, top layer first (the leftmost in `lowerdir=`). */
  lowerDirs: string[];
  upperDir?: string;
  workDir?: string;
  /** Read-only when there is no upper dir, or when `ro` was given. */
  readOnly: boolean;
  fsname: string;
  /** True when fsname= was given explicitly. */
  fsnameGiven: boolean;
  logLevel?: string;
  /** Seconds the kernel may cache attributes / names (FUSE attr_timeout / entry_timeout). */
  attrTimeout?: number;
  entryTimeout?: number;
  /**
   * `volatile` (kernel overlayfs's option): no fsync of copied-up data, and fsync/fdatasync of files on the
   * mount are no-ops. Only meaningful with an upper dir; see UnionFs.prepareWorkDir for the dirty marker.
   */
  volatile: boolean;
  /**
   * How the mount talks to the kernel: 'kernel' (the default: Strata's own /dev/fuse transport,
   * lib/fuse/kernel) or 'fuse-native' (the libfuse 2 binding the project started on, kept as a fallback).
   */
  transport: Transport;
  /** Generic mount flags the kernel transport passes to mount(2) (fuse-native ignores them). */
  nosuid?: boolean;
  nodev?: boolean;
  noexec?: boolean;
  /** True when transport= was given explicitly. */
  transportGiven?: boolean;
  /** FUSE passthrough where the kernel offers it and it is safe (kernel transport only); off forces it off. */
  passthrough: boolean;
  /**
   * fuse_fd=N: serve an open /dev/fuse fd inherited from the parent instead of opening one (kernel transport).
   * The daemon keeps a duplicate, so the mount outlives this server; with node_journal= a new server resumes it.
   */
  fuseFd?: number;
  /** node_journal=PATH: where the node table is journaled for a server that takes over the connection. */
  nodeJournal?: string;
  /**
   * redirect_dir: 'on' (Strata's default) creates and follows trusted.overlay.redirect, so merged and lower
   * dirs can be renamed; 'follow' (also what "off" means, with the kernel's redirect_always_follow=Y) follows
   * redirects already there but renaming such a dir gives EXDEV; 'nofollow' neither follows nor creates them.
   */
  redirectDir: RedirectMode;
  /** index=on (Strata's default): a lower hard link is copied up once and all its names stay one inode. */
  index: boolean;
  /** userxattr: overlay xattrs live in user.overlay.* instead of trusted.overlay.* (unprivileged use). */
  userxattr: boolean;
  /** uuid=null or uuid=off: origins are recorded with a null filesystem uuid. */
  nullUuid: boolean;
  /**
   * nfs_export=on: file handles of the mount decode (name_to_handle_at + open_by_handle_at, NFS export), through
   * FUSE export support (kernel transport only, see lib/fuse/kernel/session.ts). Off (the default, as the
   * kernel's): name_to_handle_at fails with EOPNOTSUPP.
   */
  nfsExport: boolean;
  /** The CPU the server's threads are kept on ('any' to let the scheduler choose), see strata-overlay.ts. */
  cpu?: number | 'any';
  /**
   * Options accepted without effect: mount(8)'s generic ones (rw, nodev, noatime, …, x-*, comment=) and the FUSE
   * options Strata always sets itself (allow_other, default_permissions, subtype). Kernel overlayfs options are
   * never among them (see FIXED_KERNEL_OPTIONS).
   */
  ignored: string[];
}

export type Transport = 'kernel' | 'fuse-native';
export const TRANSPORTS: readonly Transport[] = ['kernel', 'fuse-native'];
export type RedirectMode = 'on' | 'follow' | 'nofollow';

/** Options mount(8) and mount.fuse3 pass along that do not concern the filesystem itself. */
const GENERIC_OPTIONS = new Set([
  'rw', 'dev', 'nodev', 'suid', 'nosuid', 'exec', 'noexec', 'atime', 'noatime', 'relatime', 'norelatime',
  'strictatime', 'nostrictatime', 'lazytime', 'nolazytime', 'diratime', 'nodiratime', 'sync', 'async', 'dirsync',
  'mand', 'nomand', 'auto', 'noauto', 'nofail', 'user', 'nouser', 'users', 'owner', 'group', 'defaults', '_netdev',
  'silent', 'loud', 'iversion', 'noiversion',
]);

/**
 * Kernel overlayfs options Strata does not implement: accepted only with the value that asks for what
 * Strata does anyway, refused otherwise with the reason. Unlike the generic options, a kernel overlayfs option
 * is never accepted and ignored.
 */
const FIXED_KERNEL_OPTIONS: Record<string, { accepts: (value: string | undefined) => boolean; refusal: string }> = {
  // Strata always keeps the layers' inode numbers apart in the high bits of st_ino under one st_dev.
  xino: { accepts: (v) => v === 'on' || v === 'auto', refusal: 'strata-overlay always maps the inode numbers of all layers into one st_dev (as xino=on does); use xino=on or xino=auto' },
  metacopy: { accepts: (v) => v === 'off', refusal: 'metadata-only copy-up (metacopy=on) is not supported by strata-overlay; use metacopy=off' },
  verity: { accepts: (v) => v === 'off', refusal: 'fs-verity of metacopy files (verity=) is not supported by strata-overlay; use verity=off' },
};

/** The overlay options in effect, spelled as kernel overlayfs shows them in /proc/mounts. */
export function effectiveOptions(params: UnionParams): string[] {
  const options = [`redirect_dir=${params.redirectDir}`, `index=${params.index ? 'on' : 'off'}`, 'xino=on', `uuid=${params.nullUuid ? 'null' : 'on'}`];
  if (params.nfsExport) options.push('nfs_export=on');
  if (params.userxattr) options.push('userxattr');
  if (params.volatile) options.push('volatile');
  return options;
}

function badOption(message: string): StrataError {
  return new StrataError('STRATA_BAD_OPTION', message);
}

/**
 * Splits on unescaped `separator`; a backslash escapes the next character, as fuse_opt does for options
 * ("a=1,b=x\\,y") and kernel overlayfs does for `:` inside lowerdir paths.
 */
function splitEscaped(value: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const ch = value[i];
    if (ch === '\\' && i + 1 < value.length) {
      current += value[++i];
    } else if (ch === separator) {
      parts.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts;
}

export function splitOptions(optionString: string): string[] {
  return splitEscaped(optionString, ',').filter((p) => p.length > 0);
}

function splitLowerDirs(value: string): string[] {
  return splitEscaped(value, ':');
}

/** Parses the option strings (each as given to one `-o`) into parameters, without touching the disk. */
export function parseOptions(optionStrings: string[]): UnionParams {
  const params: UnionParams = {
    lowerDirs: [], readOnly: false, fsname: 'strata-overlay', fsnameGiven: false, volatile: false, ignored: [],
    transport: 'kernel', passthrough: true, redirectDir: 'on', index: true, userxattr: false, nullUuid: false,
    nfsExport: false,
  };
  let indexGiven = false;
  let redirectGiven: string | undefined;
  let sawLower = false;
  let forceReadOnly = false;
  for (const option of optionStrings.flatMap(splitOptions)) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? undefined : option.slice(eq + 1);
    switch (key) {
      case 'lowerdir': {
        if (!value) throw badOption('lowerdir= needs at least one directory');
        const dirs = splitLowerDirs(value);
        if (dirs.some((d) => d.length === 0)) throw badOption(`lowerdir="${value}" has an empty entry`);
        params.lowerDirs = dirs;
        sawLower = true;
        break;
      }
      case 'upperdir':
      case 'workdir':
      case 'fsname':
      case 'loglevel':
        if (!value) throw badOption(`${key}= needs a value`);
        if (key === 'upperdir') params.upperDir = value;
        else if (key === 'workdir') params.workDir = value;
        else if (key === 'fsname') {
          params.fsname = value;
          params.fsnameGiven = true;
        }
        else params.logLevel = value;
        break;
      case 'ro':
        forceReadOnly = true;
        break;
      case 'volatile':
        if (value !== undefined) throw badOption(`volatile takes no value, got "${option}"`);
        params.volatile = true;
        break;
      case 'redirect_dir':
        if (value === 'on' || value === 'follow' || value === 'nofollow') params.redirectDir = value;
        // "off": not created; followed, since the kernel's redirect_always_follow defaults to Y.
        else if (value === 'off') params.redirectDir = 'follow';
        else throw badOption(`redirect_dir= must be on, follow, off or nofollow, got "${option}"`);
        redirectGiven = value;
        break;
      case 'index':
        if (value !== 'on' && value !== 'off') throw badOption(`index= must be on or off, got "${option}"`);
        params.index = value === 'on';
        indexGiven = true;
        break;
      case 'nfs_export':
        if (value !== 'on' && value !== 'off') throw badOption(`nfs_export= must be on or off, got "${option}"`);
        params.nfsExport = value === 'on';
        break;
      case 'userxattr':
        if (value !== undefined) throw badOption(`userxattr takes no value, got "${option}"`);
        params.userxattr = true;
        break;
      case 'uuid':
        if (value === 'on' || value === 'auto') params.nullUuid = false;
        else if (value === 'null' || value === 'off') params.nullUuid = true;
        else throw badOption(`uuid= must be on, auto, null or off, got "${option}"`);
        break;
      case 'cpu': {
        if (value === 'any') params.cpu = 'any';
        else if (value !== undefined && /^\d+$/.test(value)) params.cpu = Number(value);
        else throw badOption(`cpu= needs a CPU number or "any", got "${value ?? ''}"`);
        break;
      }
      case 'transport': {
        if (!TRANSPORTS.includes(value as Transport)) {
          throw badOption(`transport= must be one of ${TRANSPORTS.join(', ')}, got "${value ?? ''}"`);
        }
        params.transport = value as Transport;
        params.transportGiven = true;
        break;
      }
      case 'passthrough': {
        if (value !== 'on' && value !== 'off') throw badOption(`passthrough= must be "on" or "off", got "${value ?? ''}"`);
        params.passthrough = value === 'on';
        break;
      }
      case 'fuse_fd': {
        if (value === undefined || !/^\d+$/.test(value)) throw badOption(`fuse_fd= needs a file descriptor number, got "${value ?? ''}"`);
        params.fuseFd = Number(value);
        break;
      }
      case 'node_journal': {
        if (value === undefined || !value.startsWith('/')) throw badOption(`node_journal= needs an absolute path, got "${value ?? ''}"`);
        params.nodeJournal = value;
        break;
      }
      case 'attr_timeout':
      case 'entry_timeout': {
        const seconds = Number(value);
        if (value === undefined || value === '' || !Number.isFinite(seconds) || seconds < 0) {
          throw badOption(`${key}= needs a number of seconds, got "${value ?? ''}"`);
        }
        if (key === 'attr_timeout') params.attrTimeout = seconds;
        else params.entryTimeout = seconds;
        break;
      }
      // FUSE-level options that Strata always sets itself.
      case 'allow_other':
      case 'default_permissions':
      case 'subtype':
        params.ignored.push(option);
        break;
      default: {
        const fixed = FIXED_KERNEL_OPTIONS[key];
        if (fixed) {
          if (!fixed.accepts(value)) throw badOption(`"${option}": ${fixed.refusal}`);
        } else if (GENERIC_OPTIONS.has(key) || key.startsWith('x-') || key.startsWith('comment=')) {
          // The kernel transport makes the mount itself and honours these (the last one given wins).
          if (key === 'nosuid' || key === 'suid') params.nosuid = key === 'nosuid';
          else if (key === 'nodev' || key === 'dev') params.nodev = key === 'nodev';
          else if (key === 'noexec' || key === 'exec') params.noexec = key === 'noexec';
          params.ignored.push(option);
        } else {
          throw badOption(`unknown mount option "${option}"`);
        }
      }
    }
  }
  if (!sawLower) throw badOption('missing lowerdir= (give at least one lower directory)');
  if (params.upperDir !== undefined && params.workDir === undefined) throw badOption('upperdir= needs workdir= as well');
  if (params.workDir !== undefined && params.upperDir === undefined) throw badOption('workdir= needs upperdir= as well');
  params.readOnly = forceReadOnly || params.upperDir === undefined;
  if (params.nodeJournal !== undefined && params.fuseFd === undefined) throw badOption('node_journal= needs fuse_fd= (a connection someone else keeps open)');
  if (params.fuseFd !== undefined && params.transport !== 'kernel') throw badOption('fuse_fd= works only with transport=kernel');
  if (params.nfsExport) {
    // The kernel needs the index to decode handles of copied-up lower files, and refuses the explicit conflict
    // (index=on is Strata's default anyway). Strata's handles are node ids (no index needed), but the same
    // options are accepted and refused as on the kernel.
    if (indexGiven && !params.index) throw badOption('conflicting options: nfs_export=on,index=off');
    // libfuse 2's path API has no lookup by node id: the handles it hands out stop working once the kernel
    // evicts the inode, which is no NFS export.
    if (params.transport !== 'kernel') throw badOption('nfs_export=on works only with transport=kernel (libfuse 2 cannot look nodes up by id)');
  }
  if (params.userxattr) {
    // As the kernel: redirects in user.* xattrs would let an unprivileged upper point lookups anywhere below.
    if (redirectGiven !== undefined && params.redirectDir !== 'nofollow') throw badOption(`conflicting options: userxattr,redirect_dir=${redirectGiven} (userxattr needs redirect_dir=nofollow)`);
    params.redirectDir = 'nofollow';
  }
  // As the kernel: "volatile" is meaningless without an upper to write (it ignores it there too).
  if (params.readOnly) params.volatile = false;
  return params;
}

function statDir(role: string, dir: string): fs.Stats {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not accessible' : `cannot be read (${code})`;
    throw new StrataError('STRATA_BAD_DIR', `${role} "${dir}" ${why}`, { cause: err });
  }
  if (!stat.isDirectory()) throw new StrataError('STRATA_BAD_DIR', `${role} "${dir}" is not a directory`);
  try {
    fs.accessSync(dir, fs.constants.R_OK | fs.constants.X_OK);
  } catch (err) {
    throw new StrataError('STRATA_BAD_DIR', `${role} "${dir}" is not readable`, { cause: err });
  }
  return stat;
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * Resolves every directory to an absolute real path and checks the rules kernel overlayfs enforces:
 * all dirs exist and are readable, work and upper are on the same filesystem and do not contain each other.
 */
export function validateParams(params: UnionParams, cwd = process.cwd()): UnionParams {
  const resolve = (dir: string) => fs.realpathSync(path.resolve(cwd, dir));
  const lowerDirs = params.lowerDirs.map((dir) => {
    statDir('lowerdir', path.resolve(cwd, dir));
    return resolve(dir);
  });
  const result: UnionParams = { ...params, lowerDirs };
  if (params.upperDir !== undefined && params.workDir !== undefined) {
    const upperStat = statDir('upperdir', path.resolve(cwd, params.upperDir));
    const workStat = statDir('workdir', path.resolve(cwd, params.workDir));
    const upperDir = resolve(params.upperDir);
    const workDir = resolve(params.workDir);
    if (upperStat.dev !== workStat.dev) {
      throw new StrataError('STRATA_BAD_DIR', `workdir "${params.workDir}" is on another filesystem than upperdir "${params.upperDir}"`);
    }
    if (upperDir === workDir || isInside(workDir, upperDir) || isInside(upperDir, workDir)) {
      throw new StrataError('STRATA_BAD_DIR', `workdir "${params.workDir}" and upperdir "${params.upperDir}" must be separate, non-nested directories`);
    }
    if (!params.readOnly) {
      try {
        fs.accessSync(upperDir, fs.constants.W_OK);
        fs.accessSync(workDir, fs.constants.W_OK);
      } catch (err) {
        throw new StrataError('STRATA_BAD_DIR', `upperdir "${params.upperDir}" or workdir "${params.workDir}" is not writable`, { cause: err });
      }
    }
    for (const lower of lowerDirs) {
      if (isInside(lower, upperDir) || isInside(upperDir, lower)) {
        throw new StrataError('STRATA_BAD_DIR', `lowerdir "${lower}" and upperdir "${params.upperDir}" overlap`);
      }
    }
    result.upperDir = upperDir;
    result.workDir = workDir;
  }
  return result;
}
