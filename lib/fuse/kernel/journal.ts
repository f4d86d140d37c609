/**
 * The node journal: what a restarted server needs to go on serving a mount whose connection outlived it.
 *
 * The kernel keeps node ids and file handles across a server restart (the daemon holds a duplicate of the
 * /dev/fuse fd, see lib/mounts/supervisor.ts), so the next server must know what every node id it may receive
 * stands for. The node table is a deterministic state machine driven by six calls (lookedUp, lookedUpNode,
 * removeAlias, renamed, exchanged, forget): the journal records those calls, and replaying them into a fresh table rebuilds
 * the same nodes with the same ids and lookup counts.
 *
 * Invariants:
 *  - A call is in the journal before the kernel can see its effect: the table records it before it changes,
 *    and replies are sent after that.
 *  - The journal is a MAP_SHARED file mapping (native mapShared): a record is a few stores to memory, no
 *    syscall, and a server killed with SIGKILL loses nothing it wrote.
 *  - A record is complete or absent: its body is written first, then its header word with one aligned 32-bit
 *    store (an Int32Array element). Replay stops at the first zero or malformed header.
 *  - The journal is compacted into a snapshot of the live table (a new file, renamed over the old one), so its
 *    size follows the table's, not the mount's history.
 */
import fs from 'node:fs';
import { readU64, writeU64 } from './codec.js';
import { fuseDevice } from './device.js';
import { StrataError } from '../../errors.js';
import type { KernelNode, NodeTable } from './nodes.js';

const MAGIC = 0x314a4e53; // "SNJ1"
const HEADER_BYTES = 64;
const MIN_CAPACITY = 16 * 1024 * 1024;
/** Compact when the log passes this many times the size of the last snapshot (and MIN_COMPACT_BYTES). */
const GROWTH_BEFORE_COMPACTION = 4;
const MIN_COMPACT_BYTES = 1024 * 1024;

const enum Header {
  magic = 0, state = 4, epoch = 8, minor = 12, flags = 16, rootIno = 24, nextId = 32, lastExchange = 40,
}

export const enum JournalState {
  /** Nothing mounted yet: a server that finds this starts afresh. */
  Empty = 0,
  /** INIT was answered: the connection is live and the records describe the kernel's nodes. */
  Initialized = 1,
}

const enum Rec {
  LookedUp = 1, RemoveAlias = 2, Renamed = 3, Exchanged = 4, Forget = 5, Node = 6, Alias = 7, InoOwner = 8,
  LookedUpNode = 9,
}

/** What INIT agreed, which a restarted server cannot ask the kernel again. */
export interface Negotiated {
  minor: number;
  passthrough: boolean;
  /** The kernel opens directories without OPENDIR (dirs.ts). */
  noOpendir: boolean;
  /** FUSE_EXPORT_SUPPORT was agreed (nfs_export=on): the table retains forgotten nodes (nodes.ts). */
  exportSupport: boolean;
}

export class NodeJournal {
  readonly path: string;
  private buf: Buffer;
  private words: Int32Array;
  private capacity: number;
  /** Where the next record goes. */
  private offset = HEADER_BYTES;
  private snapshotBytes = 0;
  /** Replay in progress: the table's calls must not be recorded again. */
  private replaying = false;
  private table: NodeTable | undefined;

  private constructor(path: string, buf: Buffer) {
    this.path = path;
    this.buf = buf;
    this.capacity = buf.length;
    this.words = new Int32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
  }

  /** Opens (or creates) the journal at `path`. */
  static open(path: string): NodeJournal {
    const size = Math.max(MIN_CAPACITY, fs.existsSync(path) ? fs.statSync(path).size : 0);
    const journal = new NodeJournal(path, mapShared(path, size));
    if (journal.words[Header.magic >> 2] !== MAGIC) journal.reset();
    return journal;
  }

  /** True when the journal at `path` describes an initialized connection (a server taking over resumes it). */
  static describesLiveConnection(path: string): boolean {
    let fd: number | undefined;
    try {
      fd = fs.openSync(path, 'r');
      const head = Buffer.alloc(8);
      fs.readSync(fd, head, 0, 8, 0);
      return head.readUInt32LE(Header.magic) === MAGIC && head.readUInt32LE(Header.state) === JournalState.Initialized;
    } catch {
      return false;
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }

  get state(): JournalState {
    return this.words[Header.state >> 2] as JournalState;
  }

  get epoch(): number {
    return this.words[Header.epoch >> 2] ?? 0;
  }

  get negotiated(): Negotiated {
    const flags = this.words[Header.flags >> 2] ?? 0;
    return { minor: this.words[Header.minor >> 2] ?? 0, passthrough: (flags & 1) !== 0, noOpendir: (flags & 2) !== 0, exportSupport: (flags & 4) !== 0 };
  }

  get rootIno(): number {
    return readU64(this.buf, Header.rootIno);
  }

  /** Starts afresh: no nodes, epoch 0 (a new connection). */
  reset(): void {
    this.buf.fill(0, 0, Math.min(this.capacity, this.offset + 4096));
    this.words[Header.magic >> 2] = MAGIC;
    this.offset = HEADER_BYTES;
    this.snapshotBytes = 0;
  }

  /** Marks the connection initialized, with what INIT agreed and the root's inode number. */
  initialized(negotiated: Negotiated, rootIno: number): void {
    this.words[Header.minor >> 2] = negotiated.minor;
    this.words[Header.flags >> 2] = (negotiated.passthrough ? 1 : 0) | (negotiated.noOpendir ? 2 : 0) | (negotiated.exportSupport ? 4 : 0);
    writeU64(this.buf, Header.rootIno, rootIno);
    this.words[Header.state >> 2] = JournalState.Initialized;
  }

  /**
   * The unique of the last RENAME_EXCHANGE made on disk (exchangedBy), 0 if none: a resent exchange with this
   * unique was done by an earlier server (entries.ts). Compaction copies the header, so it survives.
   */
  get lastExchange(): number {
    return readU64(this.buf, Header.lastExchange);
  }

  /** Called between an exchange on disk and its node record. */
  exchangedBy(unique: number): void {
    if (this.replaying) return;
    writeU64(this.buf, Header.lastExchange, unique);
  }

  /** A new server takes over the connection: one more epoch (file and dir handles carry it). */
  nextEpoch(): number {
    const epoch = this.epoch + 1;
    this.words[Header.epoch >> 2] = epoch;
    return epoch;
  }

  /** Replays every record into `table` and attaches the journal to it; returns how many records were applied. */
  replayInto(table: NodeTable): number {
    this.table = table;
    this.replaying = true;
    let count = 0;
    let off = HEADER_BYTES;
    try {
      for (;;) {
        const head = off + 4 <= this.capacity ? (this.words[off >> 2] ?? 0) : 0;
        const length = head & 0xffffff;
        const type = head >>> 24;
        if (head === 0 || length < 8 || off + length > this.capacity) break;
        this.apply(table, type, off + 4);
        off += length;
        count += 1;
      }
    } finally {
      this.replaying = false;
    }
    this.offset = off;
    this.snapshotBytes = off - HEADER_BYTES;
    table.reserveIds(readU64(this.buf, Header.nextId));
    table.journal = this;
    return count;
  }

  /** Attaches an empty journal to a new table. */
  attach(table: NodeTable): void {
    this.table = table;
    table.journal = this;
  }

  private apply(table: NodeTable, type: number, p: number): void {
    const b = this.buf;
    switch (type) {
      case Rec.LookedUp: {
        const parent = table.get(readU64(b, p));
        const ino = readU64(b, p + 8);
        const kind = b.readUInt32LE(p + 16);
        const name = this.name(p + 20);
        if (parent !== undefined) table.lookedUp(parent, name, ino, kind);
        return;
      }
      case Rec.RemoveAlias: {
        const parent = table.get(readU64(b, p));
        if (parent !== undefined) table.removeAlias(parent, this.name(p + 8));
        return;
      }
      case Rec.Renamed:
      case Rec.Exchanged: {
        const a = table.get(readU64(b, p));
        const c = table.get(readU64(b, p + 8));
        const aName = this.name(p + 16);
        const cName = this.name(p + 18 + b.readUInt16LE(p + 16));
        if (a === undefined || c === undefined) return;
        if (type === Rec.Renamed) table.renamed(a, aName, c, cName);
        else table.exchanged(a, aName, c, cName);
        return;
      }
      case Rec.LookedUpNode: {
        const node = table.known(readU64(b, p));
        if (node !== undefined) table.lookedUpNode(node);
        return;
      }
      case Rec.Forget:
        table.forget(readU64(b, p), readU64(b, p + 8));
        return;
      case Rec.Node:
        table.restoreNode(readU64(b, p), readU64(b, p + 8), b.readUInt32LE(p + 16), readU64(b, p + 20));
        return;
      case Rec.Alias:
        table.restoreAlias(readU64(b, p), readU64(b, p + 8), this.name(p + 16));
        return;
      case Rec.InoOwner:
        table.restoreInoOwner(readU64(b, p));
        return;
      default:
        return;
    }
  }

  private name(p: number): string {
    const length = this.buf.readUInt16LE(p);
    return this.buf.toString('utf8', p + 2, p + 2 + length);
  }

  // --- recording (called by NodeTable before it changes) ------------------------------------------------------

  lookedUp(parentId: number, name: string, ino: number, type: number): void {
    if (this.replaying) return;
    const p = this.begin(20 + 2 + 3 * name.length);
    writeU64(this.buf, p, parentId);
    writeU64(this.buf, p + 8, ino);
    this.buf.writeUInt32LE(type, p + 16);
    this.commit(Rec.LookedUp, this.putName(p + 20, name));
  }

  lookedUpNode(id: number): void {
    if (this.replaying) return;
    const p = this.begin(8);
    writeU64(this.buf, p, id);
    this.commit(Rec.LookedUpNode, p + 8);
  }

  removeAlias(parentId: number, name: string): void {
    if (this.replaying) return;
    const p = this.begin(8 + 2 + 3 * name.length);
    writeU64(this.buf, p, parentId);
    this.commit(Rec.RemoveAlias, this.putName(p + 8, name));
  }

  renamed(fromId: number, fromName: string, toId: number, toName: string, exchange = false): void {
    if (this.replaying) return;
    const p = this.begin(16 + 4 + 3 * (fromName.length + toName.length));
    writeU64(this.buf, p, fromId);
    writeU64(this.buf, p + 8, toId);
    this.commit(exchange ? Rec.Exchanged : Rec.Renamed, this.putName(this.putName(p + 16, fromName), toName));
  }

  forget(id: number, count: number): void {
    if (this.replaying) return;
    const p = this.begin(16);
    writeU64(this.buf, p, id);
    writeU64(this.buf, p + 8, count);
    this.commit(Rec.Forget, p + 16);
  }

  /** Room for a record body of at most `maxBody` bytes; returns where the body starts. */
  private begin(maxBody: number): number {
    if (this.offset + 4 + maxBody + 8 > this.capacity ||
        this.offset - HEADER_BYTES > Math.max(MIN_COMPACT_BYTES, GROWTH_BEFORE_COMPACTION * this.snapshotBytes)) {
      this.compact(maxBody);
    }
    return this.offset + 4;
  }

  private putName(p: number, name: string): number {
    const length = this.buf.write(name, p + 2, 'utf8');
    this.buf.writeUInt16LE(length, p);
    return p + 2 + length;
  }

  /** Publishes the record whose body ends at `end`: one aligned store of its header word. */
  private commit(type: number, end: number): void {
    const length = (end - this.offset + 3) & ~3;
    this.words[this.offset >> 2] = (type << 24) | length;
    this.offset += length;
  }

  /**
   * Rewrites the journal as a snapshot of the table (live nodes, then the retained ones oldest first, so a replay
   * retains and drops as this table does), in a new file renamed over this one: a crash at any
   * point leaves either the old journal or the complete new one.
   */
  private compact(extra: number): void {
    const table = this.table;
    if (table === undefined) throw new StrataError('STRATA_INTERNAL', 'node journal compaction without a table');
    const nodes = [...table.allNodes()];
    let estimate = HEADER_BYTES;
    for (const node of nodes) {
      estimate += 48;
      for (const alias of node.aliases) estimate += 24 + 3 * alias.name.length;
    }
    let capacity = this.capacity;
    while (capacity < 2 * (estimate + extra) + MIN_COMPACT_BYTES) capacity *= 2;
    const tmp = `${this.path}.new`;
    fs.rmSync(tmp, { force: true });
    const next = new NodeJournal(tmp, mapShared(tmp, capacity));
    this.buf.copy(next.buf, 0, 0, HEADER_BYTES);
    // Ids of forgotten nodes are not in the snapshot, and must not be handed out again.
    writeU64(next.buf, Header.nextId, table.peekNextId());
    next.table = table;
    for (const node of nodes) next.writeNode(node);
    for (const node of nodes) for (const alias of node.aliases) next.writeAlias(node.id, alias.parent.id, alias.name);
    // Which node owns each inode number decides whether a later lookup shares a node: it is state too.
    for (const owner of table.inoOwners()) next.writeInoOwner(owner.id);
    fs.renameSync(tmp, this.path);
    this.buf = next.buf;
    this.words = next.words;
    this.capacity = capacity;
    this.offset = next.offset;
    this.snapshotBytes = next.offset - HEADER_BYTES;
  }

  private writeNode(node: KernelNode): void {
    const p = this.offset + 4;
    writeU64(this.buf, p, node.id);
    writeU64(this.buf, p + 8, node.ino);
    this.buf.writeUInt32LE(node.type, p + 16);
    writeU64(this.buf, p + 20, node.nlookup);
    this.commit(Rec.Node, p + 28);
  }

  private writeInoOwner(id: number): void {
    const p = this.offset + 4;
    writeU64(this.buf, p, id);
    this.commit(Rec.InoOwner, p + 8);
  }

  private writeAlias(id: number, parentId: number, name: string): void {
    const p = this.offset + 4;
    writeU64(this.buf, p, id);
    writeU64(this.buf, p + 8, parentId);
    this.commit(Rec.Alias, this.putName(p + 16, name));
  }

  /** Removes the journal file (the mount is gone for good). */
  remove(): void {
    fs.rmSync(this.path, { force: true });
  }
}

function mapShared(path: string, bytes: number): Buffer {
  try {
    return fuseDevice().mapShared(path, bytes);
  } catch (err) {
    throw new StrataError('STRATA_MOUNT_FAILED', `cannot map the node journal ${path}: ${(err as Error).message}`, { cause: err });
  }
}
