/**
 * trusted.overlay.origin: the file handle of the lower object an upper object was copied up from, in the
 * kernel's on-disk encoding (struct ovl_fb), so that kernel overlayfs and Strata read each other's uppers.
 *
 *   u8 version (0) | u8 magic (0xfb) | u8 len | u8 flags | u8 type | uuid[16] | fid[len - 21]
 *
 * flags is 0 on little-endian machines; type and fid come from name_to_handle_at; uuid is the lower
 * filesystem's s_uuid (FS_IOC_GETFSUUID), all zeros when the filesystem has none.
 */
import { sys } from '../native/index.js';

const OVL_FH_VERSION = 0;
const OVL_FH_MAGIC = 0xfb;
const OVL_FB_HEADER = 21;
/** FILEID_INO32_GEN and FILEID_INO32_GEN_PARENT: the fid starts with the 32-bit inode number. */
const FILEID_INO32_GEN = 1;
const FILEID_INO32_GEN_PARENT = 2;

export function encodeOrigin(lowerReal: string, fsUuid: Buffer | null): Buffer {
  const { type, handle } = sys.nameToHandle(lowerReal);
  const fb = Buffer.alloc(OVL_FB_HEADER + handle.length);
  fb[0] = OVL_FH_VERSION;
  fb[1] = OVL_FH_MAGIC;
  fb[2] = fb.length;
  fb[3] = 0;
  fb[4] = type;
  if (fsUuid) fsUuid.copy(fb, 5, 0, 16);
  handle.copy(fb, OVL_FB_HEADER);
  return fb;
}

export interface DecodedOrigin {
  type: number;
  uuid: Buffer;
  handle: Buffer;
}

export function decodeOrigin(fb: Buffer): DecodedOrigin | undefined {
  if (fb.length < OVL_FB_HEADER || fb[0] !== OVL_FH_VERSION || fb[1] !== OVL_FH_MAGIC || fb[2] !== fb.length) return undefined;
  return { type: fb[4] ?? 0, uuid: fb.subarray(5, 21), handle: fb.subarray(OVL_FB_HEADER) };
}

/** The inode number inside a handle, when the handle type carries it in the clear (ext2/3/4, tmpfs, ...). */
export function inoFromHandle(origin: DecodedOrigin): number | undefined {
  if ((origin.type === FILEID_INO32_GEN || origin.type === FILEID_INO32_GEN_PARENT) && origin.handle.length >= 4) {
    return origin.handle.readUInt32LE(0);
  }
  return undefined;
}
