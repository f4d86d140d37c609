/**
 * The two transports behind one interface (`Mount`): KernelFuseMount, Strata's own /dev/fuse transport
 * (lib/fuse/kernel, the default), and FuseMount, the fallback on fuse-native.
 *
 * Mounting a UnionFs over FUSE with the patched fuse-native, with the options a union filesystem needs:
 *  - use_ino: our stable inode numbers reach stat and readdir (libfuse would invent its own);
 *  - no hard_remove: libfuse hides an unlinked open file by renaming it to .fuse_hidden*, which ops.ts turns
 *    into a real unlink plus a private handle, so fstat still works (nlink 0) and nothing lands in the upper dir;
 *  - allow_other + default_permissions: other users can use the mount and the kernel checks permissions
 *    against the attributes we report, as it does for kernel overlayfs;
 *  - big_writes/max_write: 128 KiB writes instead of 4 KiB;
 *  - no auto_cache (it costs a getattr round trip per open): ops.ts asks for keep_cache per file instead;
 *  - entry_timeout=0, attr_timeout=1 by default (strata-overlay.ts): the high-level libfuse API gives each
 *    name its own kernel inode, so after a write through one hard link another name's cached attributes are
 *    stale. With entries never cached, every path walk asks again (LOOKUP carries fresh attributes), which
 *    keeps hard links coherent by path at a fraction of the cost of attr_timeout=0 (measured: find -ls and
 *    tar -c 3-4x slower with attr_timeout=0, about 15% with entry_timeout=0).
 */
import type { Logger } from '../log.js';
import { StrataError } from '../errors.js';
import { readMountTableSync } from '../mounts/mountinfo.js';
import type { UnionFs } from '../union/super.js';
import { loadFuseNative } from './binding.js';
import { createFuseOps, type CallerSource } from './ops.js';
import { FuseSession, type SessionOptions } from './kernel/session.js';
import { NodeJournal } from './kernel/journal.js';

/** True when a server given this node journal (and the connection's fd) would resume a live connection. */
export function journalDescribesLiveConnection(journalPath: string): boolean {
  return NodeJournal.describesLiveConnection(journalPath);
}

/** What strata-overlay needs of a mounted transport. */
export interface Mount {
  readonly mountpoint: string;
  mount(): Promise<void>;
  unmount(): Promise<void>;
  /** Resolves once the mount is gone (a plain `umount`, `fusermount -u`, or our own unmount). */
  waitUntilUnmounted(): Promise<void>;
}

/** The kernel transport's options are its session's (lib/fuse/kernel/session.ts). */
export type KernelMountOptions = SessionOptions;

/** Strata's own transport: see lib/fuse/kernel/session.ts and docs/native.md. */
export class KernelFuseMount implements Mount {
  readonly mountpoint: string;
  private readonly session: FuseSession;
  private readonly logger: Logger;

  constructor(ufs: UnionFs, mountpoint: string, options: KernelMountOptions, logger: Logger) {
    this.mountpoint = mountpoint;
    this.logger = logger;
    this.session = new FuseSession(ufs, mountpoint, options, logger.child({ component: 'fuse-kernel' }));
  }

  mount(): Promise<void> {
    return this.session.mount();
  }

  /** 'resumed' when this server took over a connection an earlier one left (see session.ts resume). */
  get started(): 'mounted' | 'resumed' {
    return this.session.started;
  }

  unmount(): Promise<void> {
    return this.session.unmount();
  }

  /**
   * Resolves when the connection ends, or when the mount is gone from this mount namespace: a copy of the
   * mount in another namespace (made by an unshare while we were mounted) keeps the connection alive after
   * `umount` here, and the server should still end, as fuse-native's does.
   */
  async waitUntilUnmounted(pollMs = 500): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const gone = new Promise<void>((resolve) => {
      timer = setInterval(() => {
        if (!isMountPoint(this.mountpoint)) resolve();
      }, pollMs);
    });
    await Promise.race([this.session.waitUntilEnded(), gone]);
    clearInterval(timer);
    this.logger.info({ mountpoint: this.mountpoint }, 'unmounted');
  }
}

interface FuseInstance {
  /** From our patch (scripts/fuse-native/0003): the credentials behind the request being dispatched. */
  getCaller(): { uid: number; gid: number; pid: number; umask: number };
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
  _fuseOptions(): string;
}
type FuseConstructor = new (mnt: string, ops: object, opts: object) => FuseInstance;

export interface FuseMountOptions {
  fsname: string;
  subtype: string;
  /** Seconds the kernel may cache attributes and names. */
  attrTimeout: number;
  entryTimeout: number;
  readOnly: boolean;
  /** Honour setuid/setgid bits and device nodes (cleared MS_NOSUID / MS_NODEV); root only. */
  suid: boolean;
  dev: boolean;
}

function escapeOption(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/,/g, '\\,');
}

export function fuseOptionString(options: FuseMountOptions): string {
  const list = [
    'allow_other',
    'default_permissions',
    'use_ino',
    'big_writes',
    'max_write=131072',
    'max_read=131072',
    `attr_timeout=${options.attrTimeout}`,
    `entry_timeout=${options.entryTimeout}`,
    'negative_timeout=0',
    `fsname=${escapeOption(options.fsname)}`,
    `subtype=${escapeOption(options.subtype)}`,
  ];
  if (options.readOnly) list.push('ro');
  // libfuse mounts nosuid,nodev unless told otherwise; only root may ask for suid or dev.
  const root = process.getuid?.() === 0;
  list.push(root && options.suid ? 'suid' : 'nosuid', root && options.dev ? 'dev' : 'nodev');
  return `-o${list.join(',')}`;
}

/** True when `mountpoint` is the mount point of something right now. */
export function isMountPoint(mountpoint: string): boolean {
  return readMountTableSync().some((entry) => entry.mountPoint === mountpoint);
}

export class FuseMount implements Mount {
  private readonly fuse: FuseInstance;
  private readonly logger: Logger;
  readonly mountpoint: string;

  constructor(ufs: UnionFs, mountpoint: string, options: FuseMountOptions, logger: Logger) {
    this.logger = logger;
    this.mountpoint = mountpoint;
    const Fuse = loadFuseNative<FuseConstructor>();
    const optionString = fuseOptionString(options);
    class StrataFuse extends Fuse {
      override _fuseOptions(): string {
        return optionString;
      }
    }
    // The op table needs the instance (for the caller) and the instance needs the op table: close over a slot.
    let instance: FuseInstance | undefined;
    const callerOf: CallerSource = () => {
      const caller = instance?.getCaller();
      return caller ? { uid: caller.uid, gid: caller.gid } : { uid: 0, gid: 0 };
    };
    instance = new StrataFuse(mountpoint, createFuseOps(ufs, logger.child({ component: 'fuse-ops' }), callerOf), {
      timeout: false,
    });
    this.fuse = instance;
  }

  mount(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.fuse.mount((err) => {
        if (err) reject(new StrataError('STRATA_MOUNT_FAILED', `cannot mount FUSE at ${this.mountpoint}: ${err.message}`, { cause: err }));
        else resolve();
      });
    });
  }

  unmount(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.fuse.unmount((err) => {
        if (err) reject(err);
        else resolve();
      });
    });
  }

  /** Resolves once the mount is gone (a plain `umount`, `fusermount -u`, or our own unmount). */
  waitUntilUnmounted(pollMs = 500): Promise<void> {
    return new Promise((resolve) => {
      const timer = setInterval(() => {
        if (!isMountPoint(this.mountpoint)) {
          clearInterval(timer);
          this.logger.info({ mountpoint: this.mountpoint }, 'unmounted');
          resolve();
        }
      }, pollMs);
    });
  }
}
