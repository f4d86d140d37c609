/**
 * Encoding of attributes into the patched fuse-native stat layout (Uint32Array(22), see
 * docs/native.md): 64-bit size, inode and block counts as lo/hi pairs, times as signed seconds + nanoseconds.
 */
import { StatIndex } from '../native/index.js';

export const STAT_LENGTH = 22;
const TWO_32 = 4294967296;

function setU64(out: Uint32Array, index: number, value: number): void {
  const high = Math.floor(value / TWO_32);
  out[index] = value - high * TWO_32;
  out[index + 1] = high;
}

/** A fresh array each call: fuse-native copies it on the next tick, so it must not be reused. */
export function encodeStat(s: Float64Array): Uint32Array {
  const out = new Uint32Array(STAT_LENGTH);
  out[0] = s[StatIndex.mode] ?? 0;
  out[1] = s[StatIndex.uid] ?? 0;
  out[2] = s[StatIndex.gid] ?? 0;
  setU64(out, 3, s[StatIndex.size] ?? 0);
  out[5] = 0; // the kernel reports the FUSE connection's device
  out[6] = s[StatIndex.nlink] ?? 1;
  setU64(out, 7, s[StatIndex.ino] ?? 0);
  out[9] = s[StatIndex.rdev] ?? 0;
  out[10] = s[StatIndex.blksize] ?? 4096;
  setU64(out, 11, s[StatIndex.blocks] ?? 0);
  setU64(out, 13, s[StatIndex.atimeSec] ?? 0);
  out[15] = s[StatIndex.atimeNsec] ?? 0;
  setU64(out, 16, s[StatIndex.mtimeSec] ?? 0);
  out[18] = s[StatIndex.mtimeNsec] ?? 0;
  setU64(out, 19, s[StatIndex.ctimeSec] ?? 0);
  out[21] = s[StatIndex.ctimeNsec] ?? 0;
  return out;
}

/** The minimal stat readdir needs: type bits for d_type and the inode number for d_ino. */
export function encodeDirentStat(type: number, ino: number): Uint32Array {
  const out = new Uint32Array(STAT_LENGTH);
  out[0] = type;
  setU64(out, 7, ino);
  return out;
}
