/**
 * strata_fuse: the small N-API addon (native/strata_fuse.c) that owns the /dev/fuse side of the transport.
 *
 * CONTRACT (session.ts is written against exactly this):
 *  - No function throws for an errno: each returns a non-negative result or a negative errno.
 *  - startReader's callback runs on the JS thread, once per batch: `batch` holds every request that arrived
 *    since the last call, back to back (each begins with its fuse_in_header, whose first u32 is its length).
 *    It is called one last time with (null, -errno) when the connection ends (-ENODEV after an unmount).
 *  - reply() is one writev(2) of its buffers; writes to /dev/fuse never block (nor does a notification that
 *    only invalidates attributes).
 */
import { loadNativeAddon } from '../../native/load.js';

export interface ReaderHandle {
  stats(): { batches: number; requests: number; directReads: number; directWrites: number };
  /**
   * Lets the reader thread serve READ (and WRITE when `writable`) of handle `fh` on `fd` itself, never waking JS;
   * false when the handle's slot is taken (JS serves it). See direct_io in native/strata_fuse.c.
   */
  directIo(fh: number, fd: number, writable: boolean): boolean;
  /** JS serves `fh` again; once this returns the reader thread no longer touches its fd. */
  endDirectIo(fh: number): void;
}

export interface FuseDevice {
  openDevice(): number;
  mount(source: string, target: string, fstype: string, flags: number, data: string): number;
  umount(target: string, flags: number): number;
  backingOpen(devFd: number, fd: number): number;
  backingClose(devFd: number, backingId: number): number;
  /** One writev of head[0, headLength) and payload. */
  reply(fd: number, head: Buffer, headLength: number, payload?: Buffer): number;
  /** A Buffer over a MAP_SHARED mapping of `path`, created 0600 and grown to `bytes`; throws on failure. */
  mapShared(path: string, bytes: number): Buffer;
  startReader(fd: number, bufferSize: number, onBatch: (batch: Buffer | null, error: number) => void): ReaderHandle;
}

let addon: FuseDevice | undefined;

/** True when the addon is built (a tree built before the transport existed has only strata_sys). */
export function fuseDeviceAvailable(): boolean {
  try {
    fuseDevice();
    return true;
  } catch {
    return false;
  }
}

/** Loaded on first use, so that the fuse-native transport works without this addon. */
export function fuseDevice(): FuseDevice {
  addon ??= loadNativeAddon<FuseDevice>('strata_fuse');
  return addon;
}
