/** Records of the layer store, as kept in LevelDB (see docs/on-disk-format.md, "Layer store"). */
import type { Digest } from './digest.js';

/** Extracted content of one diffID, shared by every chain that contains it. Sublevel `layerContents`, key diffID. */
export interface LayerContentRecord {
  diffID: Digest;
  /** Directory name under <root>/layers/: a short prefix of the diffID, kept short for `lowerdir=`. */
  dirName: string;
  /** Bytes of regular-file data in the layer (hard links counted once per entry). */
  size: number;
  /** Tar entries applied. */
  entries: number;
  /** Digest and size of the blob as imported (compressed or not). */
  compressedDigest: Digest;
  compressedSize: number;
  mediaType: string;
  createdAt: string;
  /**
   * Set from the commit until the staged dir is renamed into place: start-up finishes such a rename
   * (roll forward) from <root>/layer-tmp/<stagingName>.
   */
  stagingName?: string;
  /**
   * Set while the layer is kept as its blob, verified against its digest, at <root>/layer-blobs/<dirName> and not
   * yet extracted (a registry pull stores blobs, as `skopeo copy` does; the first use extracts them, and stratad
   * extracts them in the background). size and entries are 0 until then; the diffID is checked when extracting.
   */
  packed?: true;
}

/** One layer in one chain. Sublevel `layers`, key chainID. */
export interface LayerRecord {
  chainID: Digest;
  diffID: Digest;
  /** chainID of the layer below, null for a bottom layer. */
  parent: Digest | null;
  /** 1 for a bottom layer. */
  depth: number;
  createdAt: string;
}

/** A holder of a layer (an image, a mount). Sublevel `refs`, key `<chainID>|<holder>`. */
export interface LayerRefRecord {
  chainID: Digest;
  holder: string;
  since: string;
}

/** What `layer ls` and `layer inspect` show: the chain record joined with its content and users. */
export interface LayerInfo extends LayerRecord {
  size: number;
  entries: number;
  compressedDigest: Digest;
  compressedSize: number;
  mediaType: string;
  /** Absolute path of the extracted content dir (where it will be while `packed`). */
  path: string;
  /** Stored as its blob, not extracted yet: size and entries are 0 until the first use extracts it. */
  packed: boolean;
  holders: string[];
  children: Digest[];
}

export interface ImportProgress {
  /** 1-based index of the layer being read, and how many there are. */
  layer: number;
  layers: number;
  /** Blob bytes read so far for this layer, and its size when known. */
  bytes: number;
  totalBytes: number | null;
}

export type ProgressListener = (progress: ImportProgress) => void;
