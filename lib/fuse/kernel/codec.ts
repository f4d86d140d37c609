/** Little-endian field helpers for the FUSE structs (64-bit fields as JS numbers; node ids and offsets stay < 2^53). */

export const TWO_32 = 4294967296;

export function writeU64(buf: Buffer, off: number, value: number): void {
  const high = Math.floor(value / TWO_32);
  buf.writeUInt32LE(value - high * TWO_32, off);
  buf.writeInt32LE(high | 0, off + 4);
}

export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO_32;
}

/** A NUL-terminated name at `off`; returns the string and the offset after its NUL. */
export function readName(buf: Buffer, off: number, end: number): [string, number] {
  let nul = buf.indexOf(0, off);
  if (nul < 0 || nul > end) nul = end;
  return [buf.toString('utf8', off, nul), nul + 1];
}

