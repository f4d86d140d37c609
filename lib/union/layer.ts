/**
 * The few types the union filesystem is built from, named once (like ovl_layer / ovl_path / ovl_entry).
 */

/** One real directory tree taking part in the union. Index 0 is the upper layer when there is one. */
export interface Layer {
  readonly index: number;
  readonly root: string;
  readonly isUpper: boolean;
  /** st_dev of the layer root; layers on one filesystem share it. */
  readonly dev: number;
  /** Position of this layer's filesystem among the distinct filesystems of the mount (for inode numbers). */
  readonly fsIndex: number;
}

/** A real object inside one layer. */
export interface LayerPath {
  readonly layer: Layer;
  /** Absolute path on the real filesystem. */
  readonly real: string;
  /** Path relative to the layer root, with a leading '/' ("/" for the root). */
  readonly rel: string;
}

/** File type bits. */
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;
export const S_IFSOCK = 0o140000;

/**
 * A resolved name in the merged view. Entries are cached by merged path and dropped whenever a namespace
 * change through the mount could alter them (see UnionFs.invalidate*).
 */
export interface UnionEntry {
  /** Merged path, "/" for the root. */
  readonly path: string;
  /** File type bits (S_IFMT) of the visible object. */
  readonly type: number;
  /** The visible object: the upper one when it exists, else the topmost lower one. */
  top: LayerPath;
  /** True when `top` is in the upper layer. */
  inUpper: boolean;
  /**
   * For a directory: every real directory merged into it below `top`, top-down, already cut at an opaque dir
   * and following redirects. For a non-directory: the topmost lower object when `top` is in the upper layer
   * and one exists at the same name (used only to know a lower object is there).
   */
  lowers: LayerPath[];
  /** The path this object has in the lower layers (differs from `path` after a redirected rename). */
  lowerRel?: string;
  /** trusted.overlay.opaque=y on the upper dir. */
  opaque: boolean;
  /** trusted.overlay.redirect of the upper dir, as stored. */
  redirect?: string;
  /** Inode number reported for this object, stable across copy-up and remount. */
  ino: number;
  /**
   * For a lower hard link (st_nlink > 1) that is not in the upper layer yet: the index entry holding its
   * copied-up data, once any of its names was copied up. Data and attributes come from there.
   */
  indexReal?: string;
  /** For an upper non-directory with several links: whether the hard link index has its inode (lazily set). */
  indexed?: boolean;
  /** st_nlink of the lower object, for lower non-directories. */
  lowerNlink?: number;
  /** The cached entry of the directory this one was looked up in (UnionFs's cache; undefined for the root). */
  parentEntry?: UnionEntry;
  /** Set when the cache dropped this entry: every entry looked up through it is stale too. */
  stale?: boolean;
}
