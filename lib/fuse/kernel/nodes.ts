/**
 * The node table: what the kernel's node ids stand for.
 *
 * Invariants:
 *  - A node id names one union inode while the kernel holds lookups on it (nlookup > 0). Ids are never
 *    reused (a counter), so a late FORGET can never hit a newer node.
 *  - Hard links share one node: a lookup whose union st_ino is already a live, still-linked non-directory
 *    node of the same type returns that node, with the new name added as an alias. So the kernel has one
 *    inode (one attribute cache, one page cache) per union inode, and hard links stay coherent with long
 *    cache timeouts.
 *  - The union is path-based: a node's path is its primary alias's parent path plus its name. A rename
 *    moves one alias; the children follow because they point at their parent node, so nothing is scanned.
 *  - A node whose last name went away (unlink, rmdir, rename over it) leaves the st_ino map at once, so an
 *    inode number the real filesystem reuses for a new file cannot resurrect it; it lives on (path '') until
 *    the kernel forgets it.
 *  - Memory is bounded by what the kernel caches: FORGET / BATCH_FORGET drop nodes whose count reaches 0.
 *  - With export support (nfs_export=on) a forgotten node that still has a name is retained instead, up to
 *    `retainLimit` of them, oldest dropped first: out of byId (the kernel holds no lookup on it), but still in
 *    its parents' children and in byIno, so names, renames and removals keep it as exact as a live node. A
 *    later lookup of the same inode (by name, or by id: LOOKUP "." from open_by_handle_at) revives it with the
 *    SAME id, so a file handle (node id, generation 0) outlives the kernel evicting the inode. Reviving an id
 *    for the inode it already named is safe: lookup counts are additive, so a FORGET still in flight for the
 *    old kernel inode just subtracts what it counted.
 */
import { FUSE_ROOT_ID } from './protocol.js';
import type { NodeJournal } from './journal.js';

export interface Alias {
  parent: KernelNode;
  name: string;
}

/** How the node is open (see files.ts): cached-mode and passthrough opens never mix on one inode. */
export interface NodeIo {
  cachedOpens: number;
  backingId: number | undefined;
  passthroughOpens: number;
  /** Set once the node had passthrough opens: its page cache may be stale since. */
  passthroughUsed: boolean;
}

export class KernelNode {
  readonly id: number;
  ino: number;
  /** S_IFMT bits of the union object. */
  type: number;
  nlookup = 0;
  /** Names of this inode, most recently looked up first; empty once unlinked. */
  aliases: Alias[] = [];
  /** Open real fds (FUSE file handles) of this node, for attributes of an unlinked open file. */
  openFds: Set<number> | undefined;
  io: NodeIo | undefined;
  /** The names in this directory the kernel knows, by name (directories only). */
  children: Map<string, KernelNode> | undefined;
  /** The listing of this directory being read, in cookie order (dirs.ts). */
  listing: { entries: Array<{ name: string; type: number; ino: number }>; cookies: Float64Array } | undefined;
  /** An O_PATH fd of this directory kept from just before it lost its last name (dirs.ts keepRemovedDir). */
  keptDirFd: number | undefined;

  constructor(id: number, ino: number, type: number) {
    this.id = id;
    this.ino = ino;
    this.type = type;
  }

  /** The merged-view path, or '' when the node has no name left (unlinked while in use). */
  path(): string {
    if (this.id === FUSE_ROOT_ID) return '/';
    const alias = this.aliases[0];
    return alias === undefined ? '' : aliasPath(alias);
  }
}

/** The merged-view path of one name of a node, or '' when its directory has no name left. */
export function aliasPath(alias: Alias): string {
  const parentPath = alias.parent.path();
  if (parentPath === '') return '';
  return parentPath === '/' ? `/${alias.name}` : `${parentPath}/${alias.name}`;
}

export class NodeTable {
  private readonly byId = new Map<number, KernelNode>();
  private readonly byIno = new Map<number, KernelNode>();
  private nextId = FUSE_ROOT_ID + 1;
  readonly root: KernelNode;
  /** Forgotten directories still named by a restored alias (restoreAlias); only during a restore. */
  private readonly forgottenParents = new Map<number, KernelNode>();
  /** Where every change is recorded first, when the connection must survive this server (journal.ts). */
  journal: NodeJournal | undefined;
  /** Forgotten nodes kept for export support, oldest first (see the invariants above). */
  private readonly retained = new Map<number, KernelNode>();
  /** How many forgotten nodes to retain; 0 (no export support) drops them at once. */
  retainLimit: number;

  constructor(rootIno: number, rootType: number, retainLimit = 0) {
    this.retainLimit = retainLimit;
    this.root = new KernelNode(FUSE_ROOT_ID, rootIno, rootType);
    this.root.nlookup = 1; // the kernel never forgets the root
    this.byId.set(FUSE_ROOT_ID, this.root);
  }

  get size(): number {
    return this.byId.size;
  }

  get(id: number): KernelNode | undefined {
    return this.byId.get(id);
  }

  /** A live node, or a forgotten one still retained (what a file handle may name). */
  known(id: number): KernelNode | undefined {
    return this.byId.get(id) ?? this.retained.get(id);
  }

  /** How many forgotten nodes are retained. */
  get retainedCount(): number {
    return this.retained.size;
  }

  /** The node a (parent, name) resolves to, when the kernel knows it. */
  child(parent: KernelNode, name: string): KernelNode | undefined {
    return parent.children?.get(name);
  }

  /** The node at a merged-view path, when every component is known to the kernel. */
  byPath(p: string): KernelNode | undefined {
    let node: KernelNode | undefined = this.root;
    if (p === '/' || p === '') return node;
    for (const name of p.slice(1).split('/')) {
      node = node.children?.get(name);
      if (node === undefined) return undefined;
    }
    return node;
  }

  /**
   * Records one more kernel lookup of (parent, name), which resolved to union inode `ino` of type `type`.
   * Returns the node to answer with.
   */
  lookedUp(parent: KernelNode, name: string, ino: number, type: number): KernelNode {
    this.journal?.lookedUp(parent.id, name, ino, type);
    let node = parent.children?.get(name);
    if (node !== undefined && (node.ino !== ino || node.type !== type)) {
      // The name now stands for another inode (changed below the kernel, e.g. a copy-up that got its own
      // inode number): detach the old node from this name.
      this.unlinkName(parent, name);
      node = undefined;
    }
    if (node === undefined) {
      const shared = type !== 0o040000 ? this.byIno.get(ino) : undefined;
      if (shared !== undefined && shared.type === type && shared.aliases.length > 0) {
        node = shared;
      } else {
        node = new KernelNode(this.nextId++, ino, type);
        this.byId.set(node.id, node);
        this.byIno.set(ino, node);
      }
      node.aliases.unshift({ parent, name });
      (parent.children ??= new Map()).set(name, node);
    } else if (node.aliases[0]?.parent !== parent || node.aliases[0]?.name !== name) {
      // Most recently used name first: it is the likeliest to still be valid.
      const i = node.aliases.findIndex((a) => a.parent === parent && a.name === name);
      if (i > 0) node.aliases.unshift(...node.aliases.splice(i, 1));
    }
    if (node.nlookup <= 0) this.revive(node);
    node.nlookup += 1;
    return node;
  }

  /**
   * Records one more kernel lookup of `node` itself, asked by id (LOOKUP "." or ".."; export support). The
   * caller has checked that the node still names what the union has at its path. A retained node is revived.
   */
  lookedUpNode(node: KernelNode): void {
    // The root's count means nothing (it is never forgotten, and a snapshot does not keep it).
    if (node.id === FUSE_ROOT_ID) return;
    this.journal?.lookedUpNode(node.id);
    if (node.nlookup <= 0) this.revive(node);
    node.nlookup += 1;
  }

  private revive(node: KernelNode): void {
    this.retained.delete(node.id);
    node.nlookup = 0;
    this.byId.set(node.id, node);
  }

  /** The name (parent, name) is gone from the merged view (unlink, rmdir, replaced by a rename). */
  removeAlias(parent: KernelNode, name: string): void {
    this.journal?.removeAlias(parent.id, name);
    this.unlinkName(parent, name);
  }

  private unlinkName(parent: KernelNode, name: string): void {
    const node = parent.children?.get(name);
    if (node === undefined) return;
    parent.children?.delete(name);
    const i = node.aliases.findIndex((a) => a.parent === parent && a.name === name);
    if (i >= 0) node.aliases.splice(i, 1);
    if (node.aliases.length === 0 && this.byIno.get(node.ino) === node) this.byIno.delete(node.ino);
    // A retained node without a name can never be named by a handle again (ESTALE): let it go.
    if (node.aliases.length === 0 && this.retained.get(node.id) === node) this.drop(node);
  }

  // --- restoring from a journal snapshot (journal.ts); never journaled -------------------------------------

  /** Every live node, the root included, then the retained ones, oldest first (their nlookup is 0). */
  *allNodes(): IterableIterator<KernelNode> {
    yield* this.byId.values();
    yield* this.retained.values();
  }

  peekNextId(): number {
    return this.nextId;
  }

  /** Ids below `next` were handed out by an earlier server. */
  reserveIds(next: number): void {
    if (next > this.nextId) this.nextId = next;
  }

  restoreNode(id: number, ino: number, type: number, nlookup: number): void {
    if (id === FUSE_ROOT_ID) return;
    const node = new KernelNode(id, ino, type);
    node.nlookup = nlookup;
    if (nlookup > 0) this.byId.set(id, node);
    else this.retained.set(id, node);
    this.reserveIds(id + 1);
  }

  restoreAlias(id: number, parentId: number, name: string): void {
    const node = this.known(id);
    if (node === undefined) return;
    // A hard link's name can outlive the kernel's node of its directory (the kernel forgot the directory while
    // another name kept the inode cached): that parent is a forgotten node, nameless, as forget() leaves it.
    let parent = this.byId.get(parentId) ?? this.retained.get(parentId) ?? this.forgottenParents.get(parentId);
    if (parent === undefined) {
      parent = new KernelNode(parentId, 0, 0o040000);
      this.forgottenParents.set(parentId, parent);
    }
    node.aliases.push({ parent, name });
    (parent.children ??= new Map()).set(name, node);
  }

  restoreInoOwner(id: number): void {
    const node = this.known(id);
    if (node !== undefined) this.byIno.set(node.ino, node);
  }

  /** The node each inode number currently maps to (the one a new hard-link name would share). */
  inoOwners(): IterableIterator<KernelNode> {
    return this.byIno.values();
  }

  /** (parent, name) was renamed to (newParent, newName); a node already at the destination was removed. */
  renamed(parent: KernelNode, name: string, newParent: KernelNode, newName: string): void {
    this.journal?.renamed(parent.id, name, newParent.id, newName);
    this.unlinkName(newParent, newName);
    const node = parent.children?.get(name);
    if (node === undefined) return;
    parent.children?.delete(name);
    const alias = node.aliases.find((a) => a.parent === parent && a.name === name);
    if (alias !== undefined) {
      alias.parent = newParent;
      alias.name = newName;
    }
    (newParent.children ??= new Map()).set(newName, node);
  }

  /** RENAME_EXCHANGE: the two names swap inodes. `unique`: the request's, for a resend to find (journal.ts). */
  exchanged(a: KernelNode, aName: string, b: KernelNode, bName: string, unique?: number): void {
    if (unique !== undefined) this.journal?.exchangedBy(unique);
    this.journal?.renamed(a.id, aName, b.id, bName, true);
    const nodeA = a.children?.get(aName);
    const nodeB = b.children?.get(bName);
    a.children?.delete(aName);
    b.children?.delete(bName);
    const move = (node: KernelNode | undefined, from: KernelNode, fromName: string, to: KernelNode, toName: string) => {
      if (node === undefined) return;
      const alias = node.aliases.find((x) => x.parent === from && x.name === fromName);
      if (alias !== undefined) {
        alias.parent = to;
        alias.name = toName;
      }
      (to.children ??= new Map()).set(toName, node);
    };
    move(nodeA, a, aName, b, bName);
    move(nodeB, b, bName, a, aName);
  }

  /** The kernel dropped `count` lookups of node `id`; returns the node if that was its last lookup. */
  forget(id: number, count: number): KernelNode | undefined {
    if (id === FUSE_ROOT_ID) return undefined;
    this.journal?.forget(id, count);
    const node = this.byId.get(id);
    if (node === undefined) return undefined;
    node.nlookup -= count;
    if (node.nlookup > 0) return undefined;
    this.byId.delete(id);
    if (this.retainLimit > 0 && node.aliases.length > 0) {
      node.nlookup = 0;
      this.retained.set(id, node);
      if (this.retained.size > this.retainLimit) {
        const oldest = this.retained.values().next().value;
        if (oldest !== undefined) this.drop(oldest);
      }
      // Forgotten by the kernel all the same: what it held for the kernel (dirs.ts forgetDir) goes.
      return node;
    }
    this.drop(node);
    return node;
  }

  /**
   * Forgets a node for good: no name, no inode number, no children. Nodes still naming it as their parent (a
   * hard link's other name, an inode reached by handle) get no path (''), as if unlinked: never a wrong one.
   */
  private drop(node: KernelNode): void {
    this.retained.delete(node.id);
    if (this.byIno.get(node.ino) === node) this.byIno.delete(node.ino);
    for (const alias of node.aliases) {
      if (alias.parent.children?.get(alias.name) === node) alias.parent.children.delete(alias.name);
    }
    node.aliases = [];
    node.children = undefined;
  }
}
