/**
 * A FUSE session on /dev/fuse: mount, INIT negotiation, the request loop, replies and notifications.
 *
 * Threading: a C reader thread (native/strata_fuse.c) reads requests; every batch that arrived while the JS
 * thread was busy comes in one callback, and each request is parsed and dispatched here. Handlers answer
 * synchronously where they can (lookups, getattr, reads: one writev straight from this thread) and
 * asynchronously where the union must copy up. Replies and notifications are built in one scratch buffer:
 * every reply is filled and written without yielding, so one buffer serves all of them.
 */
import fs from 'node:fs';
import type { Logger } from '../../log.js';
import { StrataError } from '../../errors.js';
import { StatIndex } from '../../native/index.js';
import type { UnionFs } from '../../union/super.js';
import { toNegativeErrno } from '../errno.js';
import { fuseDevice, type FuseDevice, type ReaderHandle } from './device.js';
import { aliasPath, KernelNode, NodeTable } from './nodes.js';
import {
  ATTR_OUT, ENTRY_OUT, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, INIT_OUT, InHeader, InitFlag, IN_HEADER,
  MAX_PAGES, MAX_WRITE, Notify, Op, OUT_HEADER, REQUEST_BUFFER_SIZE,
} from './protocol.js';
import { handlers } from './handlers.js';
import type { OpenFile } from './files.js';
import type { DirHandle } from './dirs.js';
import { readU64, writeU64, TWO_32 } from './codec.js';
import { JournalState, NodeJournal } from './journal.js';

export { readName, readU64, writeU64 } from './codec.js';

const S_IFMT = 0o170000;
const WALK_SLOTS = 1024;
const ENOENT = 2;
const ENOSYS = 38;
const EPROTO = 71;
const MS_RDONLY = 1;
const MS_NOSUID = 2;
const MS_NODEV = 4;
const MS_NOEXEC = 8;

export interface SessionOptions {
  fsname: string;
  subtype: string;
  readOnly: boolean;
  /** Seconds the kernel may cache names (also negative ones) and attributes. */
  entryTimeout: number;
  attrTimeout: number;
  /** Use FUSE passthrough for opens where it is safe, when the kernel offers it. */
  passthrough: boolean;
  /** MS_NOSUID / MS_NODEV / MS_NOEXEC; unset: nosuid and nodev unless we are root, as with fuse-native. */
  nosuid?: boolean;
  nodev?: boolean;
  noexec?: boolean;
  /** An open /dev/fuse fd to serve (inherited; someone else keeps a duplicate) instead of opening one. */
  deviceFd?: number;
  /** The node journal (journal.ts): with deviceFd, a connection it describes is resumed instead of mounted. */
  journalPath?: string;
  /**
   * nfs_export=on: ask for FUSE_EXPORT_SUPPORT, so open_by_handle_at works on inodes the kernel no longer caches
   * (it then sends LOOKUP(node, ".") and, to reconnect a directory, LOOKUP(node, "..")), and retain forgotten
   * nodes so such a handle still resolves. Off: FUSE_NO_EXPORT_SUPPORT, as kernel overlayfs without nfs_export:
   * name_to_handle_at fails with EOPNOTSUPP, while fanotify can still report file ids (encode only).
   */
  exportSupport?: boolean;
  /**
   * A fault hook for the restart tests (env STRATA_TEST_DIE_BEFORE_REPLY, strata-overlay.ts): op names (as in
   * opName) whose first successful answer this server does not send, killing itself instead, so that the op is
   * done and the kernel sends it again to the next server. Direct I/O is off then, so WRITE reaches JS.
   */
  dieBeforeReplyTo?: readonly string[];
}

/**
 * Forgotten nodes retained for file handles with export support (nodes.ts). A node costs a few hundred bytes;
 * a handle of an inode evicted from the kernel more than this many forgets ago gets ESTALE.
 */
export const RETAINED_NODES = 65536;

/** One request, parsed in place: `body` is the offset of the op-specific part in `buf`. */
export interface Request {
  readonly buf: Buffer;
  readonly opcode: number;
  /** The request's unique id without FUSE_UNIQUE_RESEND (bit 63, set on requests sent again; see `resent`). */
  readonly unique: number;
  readonly resent: boolean;
  readonly nodeid: number;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  readonly body: number;
  readonly end: number;
}

export class FuseSession {
  readonly ufs: UnionFs;
  readonly logger: Logger;
  readonly options: SessionOptions;
  readonly dev: FuseDevice;
  readonly nodes: NodeTable;
  readonly statBuf = new Float64Array(StatIndex.length);
  /** Reply scratch: the largest reply is a read of max_write bytes. */
  readonly out = Buffer.allocUnsafe(REQUEST_BUFFER_SIZE);
  readonly mountpoint: string;
  fd = -1;
  /** The minor protocol version agreed at INIT, and whether passthrough and export support were agreed. */
  minor = 0;
  passthroughEnabled = false;
  exportSupport = false;
  /** Directory handles: fh -> state (see dirs.ts). */
  readonly dirHandles = new Map<number, DirHandle>();
  /** Open files by FUSE handle (files.ts). */
  readonly openFiles = new Map<number, OpenFile>();
  /** Handles of an earlier server being reopened (files.ts adoptHandle), so concurrent requests share one. */
  readonly adoptingHandles = new Map<number, Promise<number>>();
  nextDirHandle = 1;
  /** The kernel opens directories without OPENDIR (see dirs.ts); READDIR then carries no handle. */
  noOpendir = false;
  /** Directories holding a listing (dirs.ts), least recently read first. */
  readonly listedDirs = new Set<KernelNode>();
  /**
   * Which server of this connection we are: 0 for the one that mounted it, one more for each that took over.
   * File and dir handles of later epochs carry it (epoch * 2^32 + n), so a handle an earlier server gave the
   * kernel is never mistaken for one of ours (files.ts, dirs.ts).
   */
  epoch = 0;
  /** How this server came to serve the mount. */
  started: 'mounted' | 'resumed' = 'mounted';
  private journal: NodeJournal | undefined;
  /** Requests per opcode, for the end-of-connection log line (how many requests a workload costs). */
  readonly opCounts = new Uint32Array(64);
  /**
   * The last name each thread looked up (slot = pid % WALK_SLOTS): which name of a hard-linked node a change
   * came through (pathForChange). Typed arrays, so recording it costs a LOOKUP no allocation.
   */
  private readonly walkPids = new Int32Array(WALK_SLOTS);
  private readonly walkNodeIds = new Float64Array(WALK_SLOTS);
  private readonly walkParentIds = new Float64Array(WALK_SLOTS);
  private readonly walkNames: string[] = new Array<string>(WALK_SLOTS).fill('');
  private reader: ReaderHandle | undefined;
  private initDone: ((err?: Error) => void) | undefined;
  private ended: (() => void) | undefined;
  private readonly endedPromise: Promise<void>;
  private readonly entrySec: number;
  private readonly entryNsec: number;
  private readonly attrSec: number;
  private readonly attrNsec: number;
  private readonly dieBeforeReplyTo: ReadonlySet<number> | undefined;

  constructor(ufs: UnionFs, mountpoint: string, options: SessionOptions, logger: Logger) {
    this.ufs = ufs;
    this.mountpoint = mountpoint;
    this.options = options;
    this.logger = logger;
    this.dev = fuseDevice();
    ufs.getattr('/', this.statBuf);
    this.nodes = new NodeTable(this.statBuf[StatIndex.ino] ?? 1, 0o040000, options.exportSupport === true ? RETAINED_NODES : 0);
    ufs.attrsChanged = (path) => {
      this.invalidateAttrs(path);
      this.lowerReadersBackToJs();
    };
    this.entrySec = Math.floor(options.entryTimeout);
    this.entryNsec = Math.floor((options.entryTimeout - this.entrySec) * 1e9);
    this.attrSec = Math.floor(options.attrTimeout);
    this.attrNsec = Math.floor((options.attrTimeout - this.attrSec) * 1e9);
    if (options.dieBeforeReplyTo !== undefined && options.dieBeforeReplyTo.length > 0) {
      this.dieBeforeReplyTo = new Set(options.dieBeforeReplyTo.map(opcodeOf));
    }
    this.endedPromise = new Promise((resolve) => {
      this.ended = resolve;
    });
  }

  /**
   * Opens /dev/fuse, mounts it and resolves once the kernel's INIT was answered; or, given a device fd and a
   * journal of an initialized connection, takes that connection over (resume()).
   */
  async mount(): Promise<void> {
    if (this.options.journalPath !== undefined) {
      this.journal = NodeJournal.open(this.options.journalPath);
      if (this.options.deviceFd !== undefined && this.journal.state === JournalState.Initialized) return this.resume(this.journal, this.options.deviceFd);
      this.journal.reset();
      this.journal.attach(this.nodes);
    }
    const fd = this.options.deviceFd ?? this.dev.openDevice();
    if (fd < 0) throw this.mountError(`cannot open /dev/fuse (errno ${-fd})`);
    this.fd = fd;
    const data = `fd=${fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions`;
    let flags = this.options.readOnly ? MS_RDONLY : 0;
    // Device nodes and setuid binaries work on the mount as on kernel overlayfs (only root may ask for this),
    // unless the mount options say otherwise.
    const root = process.getuid?.() === 0;
    if (this.options.nosuid ?? !root) flags |= MS_NOSUID;
    if (this.options.nodev ?? !root) flags |= MS_NODEV;
    if (this.options.noexec === true) flags |= MS_NOEXEC;
    const initialized = new Promise<void>((resolve, reject) => {
      this.initDone = (err) => (err ? reject(err) : resolve());
    });
    const rc = this.dev.mount(this.options.fsname, this.mountpoint, `fuse.${this.options.subtype}`, flags, data);
    if (rc < 0) {
      if (this.options.deviceFd === undefined) fs.closeSync(fd);
      this.fd = -1;
      throw this.mountError(`mount(2) failed (errno ${-rc})`);
    }
    // Only now: reading a device fd that no mount is attached to fails at once (EPERM).
    this.reader = this.dev.startReader(fd, REQUEST_BUFFER_SIZE, (batch, error) => this.onBatch(batch, error));
    await initialized;
  }

  /**
   * Serves a connection an earlier server of this mount initialized and left (it crashed or was replaced): the
   * kernel still holds its node ids and handles. The journal rebuilds the node table with the same ids; the
   * requests the old server had read but not answered are sent again (FUSE_NOTIFY_RESEND), so their callers
   * only see a delay.
   */
  private resume(journal: NodeJournal, fd: number): void {
    this.fd = fd;
    this.epoch = journal.nextEpoch();
    this.started = 'resumed';
    this.nextDirHandle = this.epoch * TWO_32 + 1;
    ({ minor: this.minor, passthrough: this.passthroughEnabled, noOpendir: this.noOpendir, exportSupport: this.exportSupport } = journal.negotiated);
    // What the kernel agreed with the first server holds, whatever this one was started with; the replay must
    // retain forgotten nodes exactly as the tables before it did.
    this.nodes.retainLimit = this.exportSupport ? RETAINED_NODES : 0;
    const records = journal.replayInto(this.nodes);
    // RESEND before the first read: the kernel queues again every request read and not answered on this
    // connection, by whichever server. A request this server had read already would come a second time and be
    // done twice (an exchange swapped back, a rename's second run taking the name from the node it just moved).
    const out = this.out;
    out.writeUInt32LE(OUT_HEADER, 0);
    out.writeInt32LE(Notify.RESEND, 4);
    writeU64(out, 8, 0);
    const rc = this.dev.reply(this.fd, out, OUT_HEADER);
    this.reader = this.dev.startReader(fd, REQUEST_BUFFER_SIZE, (batch, error) => this.onBatch(batch, error));
    this.logger.info({ epoch: this.epoch, records, nodes: this.nodes.size, resend: rc >= 0 ? 'sent' : `errno ${-rc}` }, 'resumed the FUSE connection');
  }

  /** The mount is gone for good: its journal has nothing left to describe. */
  private dropJournal(): void {
    this.journal?.remove();
    this.journal = undefined;
    this.nodes.journal = undefined;
  }

  private mountError(message: string): StrataError {
    return new StrataError('STRATA_MOUNT_FAILED', `cannot mount FUSE at ${this.mountpoint}: ${message}`);
  }

  unmount(): Promise<void> {
    const rc = this.dev.umount(this.mountpoint, 0);
    if (rc < 0) return Promise.reject(new StrataError('STRATA_MOUNT_FAILED', `umount ${this.mountpoint} failed (errno ${-rc})`));
    return this.endedPromise;
  }

  /** Resolves once the connection ended (the mount is gone). */
  waitUntilEnded(): Promise<void> {
    return this.endedPromise;
  }

  stats(): { batches: number; requests: number; nodes: number; retained: number } {
    return { ...(this.reader?.stats() ?? { batches: 0, requests: 0 }), nodes: this.nodes.size, retained: this.nodes.retainedCount };
  }

  private onBatch(batch: Buffer | null, error: number): void {
    if (batch === null) {
      const ops: Record<string, number> = {};
      this.opCounts.forEach((n, op) => {
        if (n > 0) ops[opName(op)] = n;
      });
      // READ and WRITE the reader thread served itself never reached JS: counted there.
      const { directReads, directWrites } = this.reader?.stats() ?? { directReads: 0, directWrites: 0 };
      if (directReads > 0) ops.read = (ops.read ?? 0) + directReads;
      if (directWrites > 0) ops.write = (ops.write ?? 0) + directWrites;
      this.logger.info({ errno: -error, ...this.stats(), ops }, 'FUSE connection ended');
      // ENODEV: unmounted or aborted, so no server will resume it. Anything else leaves it to the next one.
      if (error === -19) this.dropJournal();
      this.initDone?.(this.mountError(`the connection ended before INIT (errno ${-error})`));
      this.initDone = undefined;
      this.ended?.();
      return;
    }
    let off = 0;
    while (off + IN_HEADER <= batch.length) {
      const len = batch.readUInt32LE(off + InHeader.len);
      if (len < IN_HEADER || off + len > batch.length) break;
      const req: Request = {
        buf: batch,
        opcode: batch.readUInt32LE(off + InHeader.opcode),
        unique: batch.readUInt32LE(off + InHeader.unique) + (batch.readUInt32LE(off + InHeader.unique + 4) & 0x7fffffff) * TWO_32,
        resent: (batch.readUInt32LE(off + InHeader.unique + 4) & 0x80000000) !== 0,
        nodeid: readU64(batch, off + InHeader.nodeid),
        uid: batch.readUInt32LE(off + InHeader.uid),
        gid: batch.readUInt32LE(off + InHeader.gid),
        pid: batch.readUInt32LE(off + InHeader.pid),
        body: off + IN_HEADER,
        end: off + len,
      };
      off += len;
      this.dispatch(req);
    }
  }

  private dispatch(req: Request): void {
    this.opCounts[req.opcode & 63] += 1;
    if (req.opcode === Op.INIT) return this.init(req);
    const handler = handlers[req.opcode];
    if (handler === undefined) {
      if (req.opcode === Op.FORGET || req.opcode === Op.BATCH_FORGET || req.opcode === Op.INTERRUPT) return;
      return this.replyError(req, -ENOSYS);
    }
    try {
      const result = handler(this, req);
      if (result !== undefined) result.catch((err: unknown) => this.fail(req, err));
    } catch (err) {
      this.fail(req, err);
    }
  }

  /** Answers a failed request with its errno (EIO, logged, for anything that is not an errno). */
  fail(req: Request, err: unknown, path = ''): void {
    this.replyError(req, toNegativeErrno(err, this.logger, opName(req.opcode), path));
  }

  private init(req: Request): void {
    const { buf, body } = req;
    const major = buf.readUInt32LE(body);
    const minor = buf.readUInt32LE(body + 4);
    const maxReadahead = buf.readUInt32LE(body + 8);
    let offered = buf.readUInt32LE(body + 12);
    if (major !== FUSE_KERNEL_VERSION) {
      this.logger.error({ major, minor }, 'unsupported FUSE major version');
      this.replyError(req, -EPROTO);
      return;
    }
    if ((offered & InitFlag.INIT_EXT) !== 0 && req.end - body >= 20) offered += buf.readUInt32LE(body + 16) * TWO_32;
    this.minor = Math.min(minor, FUSE_KERNEL_MINOR_VERSION);
    let wanted =
      InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS |
      InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS |
      InitFlag.ASYNC_DIO | InitFlag.ABORT_ERROR | InitFlag.INIT_EXT |
      // Modes of new objects arrive without the umask (which comes along): a default ACL replaces it (union/dir.ts).
      InitFlag.DONT_MASK;
    // Export support only when asked for (nfs_export=on, as with kernel overlayfs): it makes the kernel keep
    // handles decodable, and this server retain forgotten nodes. Without it, say so (NO_EXPORT_SUPPORT): the
    // kernel then encodes file ids for fanotify but refuses name_to_handle_at, as overlayfs does; with neither
    // flag it would hand out handles that only decode while the inode happens to be cached.
    wanted += this.options.exportSupport === true ? InitFlag.EXPORT_SUPPORT : InitFlag.NO_EXPORT_SUPPORT;
    if (this.options.passthrough) wanted += InitFlag.PASSTHROUGH;
    const agreed = andFlags(wanted, offered);
    this.passthroughEnabled = andFlags(agreed, InitFlag.PASSTHROUGH) !== 0;
    this.noOpendir = andFlags(offered, InitFlag.NO_OPENDIR_SUPPORT) !== 0;
    this.exportSupport = andFlags(agreed, InitFlag.EXPORT_SUPPORT) !== 0;
    this.nodes.retainLimit = this.exportSupport ? RETAINED_NODES : 0;
    const out = this.out;
    out.fill(0, OUT_HEADER, OUT_HEADER + INIT_OUT);
    const o = OUT_HEADER;
    out.writeUInt32LE(FUSE_KERNEL_VERSION, o);
    out.writeUInt32LE(this.minor, o + 4);
    out.writeUInt32LE(maxReadahead, o + 8);
    out.writeUInt32LE(agreed % TWO_32, o + 12);
    out.writeUInt16LE(64, o + 16); // max_background
    out.writeUInt16LE(48, o + 18); // congestion_threshold
    out.writeUInt32LE(MAX_WRITE, o + 20);
    out.writeUInt32LE(1, o + 24); // time_gran: nanoseconds
    out.writeUInt16LE(MAX_PAGES, o + 28);
    out.writeUInt32LE(Math.floor(agreed / TWO_32), o + 32); // flags2
    // max_stack_depth: the backing files live on a plain filesystem (depth 0), so our mount is depth 1.
    if (this.passthroughEnabled) out.writeUInt32LE(1, o + 36);
    // Journaled before the reply: once the kernel has it, a crash must leave a resumable journal.
    this.journal?.initialized({ minor: this.minor, passthrough: this.passthroughEnabled, noOpendir: this.noOpendir, exportSupport: this.exportSupport }, this.nodes.root.ino);
    this.send(req, INIT_OUT);
    this.logger.info({ minor: this.minor, offered, agreed, passthrough: this.passthroughEnabled, noOpendir: this.noOpendir, exportSupport: this.exportSupport }, 'FUSE INIT');
    this.initDone?.();
    this.initDone = undefined;
  }

  // --- replies ---------------------------------------------------------------------------------------------

  /** Sends the reply whose payload (`length` bytes) was written at out[OUT_HEADER..]. Returns false if the
   * kernel no longer waits for it (the request was interrupted). */
  send(req: Request, length: number): boolean {
    if (this.dieBeforeReplyTo?.has(req.opcode) === true) this.dieBeforeReply(req);
    const total = OUT_HEADER + length;
    const out = this.out;
    out.writeUInt32LE(total, 0);
    out.writeInt32LE(0, 4);
    writeUnique(out, req);
    return this.write(total);
  }

  /** The dieBeforeReplyTo hook: the op is done, its answer is never sent. */
  private dieBeforeReply(req: Request): never {
    this.logger.warn({ op: opName(req.opcode), unique: req.unique }, 'dying before the reply (STRATA_TEST_DIE_BEFORE_REPLY)');
    process.kill(process.pid, 'SIGKILL');
    throw new Error('unreachable: SIGKILL');
  }

  /** Sends a reply with a header from the scratch buffer and a payload from elsewhere (read data). */
  sendWith(req: Request, payload: Buffer): boolean {
    if (this.dieBeforeReplyTo?.has(req.opcode) === true) this.dieBeforeReply(req);
    const out = this.out;
    out.writeUInt32LE(OUT_HEADER + payload.length, 0);
    out.writeInt32LE(0, 4);
    writeUnique(out, req);
    const rc = this.dev.reply(this.fd, out, OUT_HEADER, payload);
    return this.checkWrite(rc);
  }

  replyError(req: Request, negErrno: number): void {
    const out = this.out;
    out.writeUInt32LE(OUT_HEADER, 0);
    out.writeInt32LE(negErrno, 4);
    writeUnique(out, req);
    this.write(OUT_HEADER);
  }

  replyOk(req: Request): void {
    this.send(req, 0);
  }

  /** Writes the first `length` bytes of the scratch buffer (one reply or notification). */
  private write(length: number): boolean {
    return this.checkWrite(this.dev.reply(this.fd, this.out, length));
  }

  private checkWrite(rc: number): boolean {
    if (rc >= 0) return true;
    // ENOENT: the request was interrupted and is gone. ENODEV: the connection is gone. Both are normal.
    if (rc !== -ENOENT && rc !== -19) this.logger.warn({ errno: -rc }, 'FUSE reply write failed');
    return false;
  }

  /** Writes fuse_attr at `off` from a stat buffer, reporting `ino`. */
  writeAttr(off: number, s: Float64Array, ino: number): void {
    const out = this.out;
    writeU64(out, off, ino);
    writeU64(out, off + 8, s[StatIndex.size] ?? 0);
    writeU64(out, off + 16, s[StatIndex.blocks] ?? 0);
    writeU64(out, off + 24, s[StatIndex.atimeSec] ?? 0);
    writeU64(out, off + 32, s[StatIndex.mtimeSec] ?? 0);
    writeU64(out, off + 40, s[StatIndex.ctimeSec] ?? 0);
    out.writeUInt32LE(s[StatIndex.atimeNsec] ?? 0, off + 48);
    out.writeUInt32LE(s[StatIndex.mtimeNsec] ?? 0, off + 52);
    out.writeUInt32LE(s[StatIndex.ctimeNsec] ?? 0, off + 56);
    out.writeUInt32LE(s[StatIndex.mode] ?? 0, off + 60);
    out.writeUInt32LE(s[StatIndex.nlink] ?? 1, off + 64);
    out.writeUInt32LE(s[StatIndex.uid] ?? 0, off + 68);
    out.writeUInt32LE(s[StatIndex.gid] ?? 0, off + 72);
    out.writeUInt32LE((s[StatIndex.rdev] ?? 0) % TWO_32, off + 76);
    out.writeUInt32LE(s[StatIndex.blksize] ?? 4096, off + 80);
    out.writeUInt32LE(0, off + 84);
  }

  /**
   * True when the kernel must not cache the name `path`: a lower file with several names that is not in the
   * upper layer yet. All its names share one node, and the requests that copy it up (open for write, link,
   * setattr...) name only the node; kernel overlayfs copies up the name that was used. With the name
   * uncached, every path walk through it asks LOOKUP first, which makes it the node's current name.
   */
  isAmbiguousName(path: string, st: Float64Array): boolean {
    // Only a non-directory with several links can be one (a directory's nlink counts its subdirectories):
    // checked on the stat first, which spares most lookups a second union lookup.
    if (st[StatIndex.nlink] === 1 || ((st[StatIndex.mode] ?? 0) & S_IFMT) === 0o040000) return false;
    const entry = this.ufs.lookup(path);
    return !entry.inUpper && (entry.lowerNlink ?? 1) > 1;
  }

  /** Records that thread `req.pid` just looked up (parent, name), which resolved to `nodeId` (0: nothing). */
  noteLookup(req: Request, parent: KernelNode, name: string, nodeId: number): void {
    const slot = req.pid % WALK_SLOTS;
    this.walkPids[slot] = req.pid;
    this.walkNodeIds[slot] = nodeId;
    this.walkParentIds[slot] = parent.id;
    this.walkNames[slot] = name;
  }

  /**
   * The path to act on for a request that may copy `node` up (open, setattr, link, xattr changes). The requests
   * name only the node, and the names of a lower hard link share one node, while kernel overlayfs copies up the
   * name that was used. A name not in the upper layer yet is never cached by the kernel (isAmbiguousName), so a
   * syscall through it looks it up right before the change, from the same thread: that lookup names it. A change
   * with no such lookup came through a cached name, and only names already in the upper layer are cached.
   */
  pathForChange(req: Request, node: KernelNode): string {
    if (node.aliases.length <= 1) return node.path();
    const slot = req.pid % WALK_SLOTS;
    if (this.walkPids[slot] === req.pid) {
      this.walkPids[slot] = 0; // one lookup names one change
      if (this.walkNodeIds[slot] === node.id) {
        const parentId = this.walkParentIds[slot];
        const name = this.walkNames[slot];
        const alias = node.aliases.find((a) => a.parent.id === parentId && a.name === name);
        if (alias !== undefined) return aliasPath(alias);
      }
    }
    for (const alias of node.aliases) {
      const p = aliasPath(alias);
      if (p !== '' && this.ufs.lookup(p).inUpper) return p;
    }
    return node.path();
  }

  /** Writes fuse_entry_out at `off` (node 0 = a cached negative entry). */
  writeEntry(off: number, node: KernelNode | undefined, s: Float64Array, uncachedName = false): void {
    const out = this.out;
    writeU64(out, off, node?.id ?? 0);
    writeU64(out, off + 8, 0); // generation: node ids are never reused
    writeU64(out, off + 16, uncachedName ? 0 : this.entrySec);
    writeU64(out, off + 24, this.attrSec);
    out.writeUInt32LE(uncachedName ? 0 : this.entryNsec, off + 32);
    out.writeUInt32LE(this.attrNsec, off + 36);
    if (node === undefined) out.fill(0, off + 40, off + ENTRY_OUT);
    else this.writeAttr(off + 40, s, node.ino);
  }

  /**
   * Answers with an entry for (parent, name), which resolved to the attributes in `s`: counts the kernel's
   * new lookup, and takes it back if the kernel did not get the reply.
   */
  replyEntry(req: Request, parent: KernelNode, name: string, s: Float64Array, uncachedName = false): KernelNode {
    const node = this.nodes.lookedUp(parent, name, s[StatIndex.ino] ?? 0, (s[StatIndex.mode] ?? 0) & S_IFMT);
    this.writeEntry(OUT_HEADER, node, s, uncachedName);
    if (!this.send(req, ENTRY_OUT)) this.nodes.forget(node.id, 1);
    return node;
  }

  /**
   * Answers a lookup by id (LOOKUP "." or "..", export support) with `node` itself, whose attributes are in `s`:
   * the kernel counts it as a lookup of that node like any other, so it is counted here too.
   */
  replyNodeEntry(req: Request, node: KernelNode, s: Float64Array): void {
    this.nodes.lookedUpNode(node);
    this.writeEntry(OUT_HEADER, node, s);
    if (!this.send(req, ENTRY_OUT)) this.nodes.forget(node.id, 1);
  }

  replyNegativeEntry(req: Request): void {
    this.writeEntry(OUT_HEADER, undefined, this.statBuf);
    this.send(req, ENTRY_OUT);
  }

  replyAttr(req: Request, s: Float64Array, ino: number): void {
    const out = this.out;
    writeU64(out, OUT_HEADER, this.attrSec);
    out.writeUInt32LE(this.attrNsec, OUT_HEADER + 8);
    out.writeUInt32LE(0, OUT_HEADER + 12);
    this.writeAttr(OUT_HEADER + 16, s, ino);
    this.send(req, ATTR_OUT);
  }

  // --- notifications -----------------------------------------------------------------------------------------

  /**
   * Tells the kernel that the attributes of the node at `path` changed behind its back (a copy-up turned a
   * lower directory into a merged one, say). Only attributes: no page is touched, and no inode or directory
   * lock is taken by the kernel, so this is safe while requests on that node are in flight.
   */
  invalidateAttrs(path: string): void {
    if (this.fd < 0) return;
    const node = this.nodes.byPath(path);
    // A retained node (nlookup 0) is not the kernel's: it has nothing cached to invalidate.
    if (node === undefined || node.nlookup <= 0) return;
    const out = this.out;
    const length = OUT_HEADER + 24;
    out.writeUInt32LE(length, 0);
    out.writeInt32LE(Notify.INVAL_INODE, 4);
    writeU64(out, 8, 0);
    writeU64(out, OUT_HEADER, node.id);
    writeU64(out, OUT_HEADER + 8, -1);
    writeU64(out, OUT_HEADER + 16, 0);
    this.write(length);
  }

  // --- direct I/O (native/strata_fuse.c direct_io) ----------------------------------------------------------

  /** The reader thread serves this cached-mode open's READ (and WRITE when `writable`) itself. */
  startDirectIo(open: OpenFile, writable: boolean): void {
    if (this.reader === undefined || this.dieBeforeReplyTo !== undefined) return;
    open.direct = this.reader.directIo(open.fh, open.fd, writable);
  }

  /** JS serves this open again (before its fd is closed, or its data may move). */
  endDirectIo(open: OpenFile): void {
    if (!open.direct) return;
    this.reader?.endDirectIo(open.fh);
    open.direct = false;
  }

  /**
   * A copy-up happened: a lower file open for reading must now be read from its upper copy, which the union's
   * read path finds (file.ts currentReadFd) and the reader thread does not. Copy-ups are rare next to reads, so
   * every lower reader simply goes back to JS.
   */
  private lowerReadersBackToJs(): void {
    for (const open of this.openFiles.values()) {
      if (open.direct && this.ufs.isLowerReader(open.fd)) this.endDirectIo(open);
    }
  }

  /** The node a request is about; throws ESTALE for an id the kernel should not be using. */
  node(req: Request): KernelNode {
    const node = this.nodes.get(req.nodeid);
    if (node === undefined) throw Object.assign(new Error(`unknown node ${req.nodeid}`), { code: 'ESTALE' });
    return node;
  }
}

/** The reply's unique: the request's, FUSE_UNIQUE_RESEND included (the kernel finds resent requests by it). */
function writeUnique(out: Buffer, req: Request): void {
  writeU64(out, 8, req.unique);
  if (req.resent) out.writeUInt32LE((out.readUInt32LE(12) | 0x80000000) >>> 0, 12);
}

function andFlags(a: number, b: number): number {
  const lo = (a % TWO_32 & b % TWO_32) >>> 0;
  const hi = (Math.floor(a / TWO_32) & Math.floor(b / TWO_32)) >>> 0;
  return hi * TWO_32 + lo;
}

const OP_NAMES: Record<number, string> = {};
for (const [name, value] of Object.entries({
  LOOKUP: 1, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9, UNLINK: 10, RMDIR: 11,
  RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18, FSYNC: 20, SETXATTR: 21,
  GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, FLUSH: 25, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29,
  FSYNCDIR: 30, CREATE: 35, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45, FORGET: 2, INIT: 26, ACCESS: 34,
  INTERRUPT: 36, DESTROY: 38, IOCTL: 39, POLL: 40, BATCH_FORGET: 42, LSEEK: 46, COPY_FILE_RANGE: 47, SYNCFS: 50,
  TMPFILE: 51, STATX: 52, GETLK: 31, SETLK: 32, SETLKW: 33,
})) OP_NAMES[value] = name.toLowerCase();

export function opName(opcode: number): string {
  return OP_NAMES[opcode] ?? `op${opcode}`;
}

/** The opcode of an op name as opName gives it (lower case); a name that is not one throws STRATA_BAD_OPTION. */
export function opcodeOf(name: string): number {
  for (const [opcode, known] of Object.entries(OP_NAMES)) if (known === name) return Number(opcode);
  throw new StrataError('STRATA_BAD_OPTION', `"${name}" is not a FUSE op name (${Object.values(OP_NAMES).join(', ')})`);
}
