/**
 * A minimal POSIX (pax) tar writer for layer tars. tar-stream's pack writes PAX values as UTF-8 strings, which
 * mangles binary xattr values (security.capability) and has no nanosecond times, so layer tars are encoded here.
 *
 * Output is deterministic: the same entries give the same bytes (no atime/ctime, no user or group names), so a
 * layer written from an upper and the same layer written again from its extracted copy have one diffID.
 */
import type { Writable } from 'node:stream';

export type TarType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'directory' | 'fifo';

export interface TarHeader {
  /** Relative path; directories without the trailing slash (added here). */
  name: string;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Modification time as seconds and nanoseconds. */
  mtimeSec: bigint;
  mtimeNsec: bigint;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Extended attributes to store as SCHILY.xattr.* (values are bytes). */
  xattrs?: ReadonlyMap<string, Buffer>;
}

const TYPE_FLAG: Record<TarType, string> = { file: '0', link: '1', symlink: '2', char: '3', block: '4', directory: '5', fifo: '6' };
const BLOCK = 512;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** Writes tar entries to a stream, honouring back-pressure. */
export class TarWriter {
  bytes = 0;

  constructor(private readonly out: Writable) {}

  async entry(header: TarHeader, data?: AsyncIterable<Buffer>): Promise<void> {
    const name = header.type === 'directory' ? `${header.name}/` : header.name;
    const pax: Array<[string, Buffer]> = [];
    const nameBytes = Buffer.from(name);
    let ustarName = name;
    let prefix = '';
    if (nameBytes.length > 100) {
      const split = splitName(name);
      if (split === null) pax.push(['path', nameBytes]);
      else [prefix, ustarName] = split;
    }
    if (split100(header.linkname)) pax.push(['linkpath', Buffer.from(header.linkname!)]);
    if (header.mtimeNsec !== 0n) pax.push(['mtime', Buffer.from(`${header.mtimeSec}.${header.mtimeNsec.toString().padStart(9, '0')}`)]);
    if (header.uid > 0o7777777) pax.push(['uid', Buffer.from(String(header.uid))]);
    if (header.gid > 0o7777777) pax.push(['gid', Buffer.from(String(header.gid))]);
    if (header.size > 0o77777777777) pax.push(['size', Buffer.from(String(header.size))]);
    for (const [key, value] of [...(header.xattrs ?? new Map<string, Buffer>())].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      pax.push([`SCHILY.xattr.${key}`, value]);
    }
    if (pax.length > 0) {
      const records = Buffer.concat(pax.map(([k, v]) => paxRecord(k, v)));
      const paxName = `PaxHeaders/${ustarName.replace(/\/$/, '').split('/').pop() ?? ''}`.slice(0, 100);
      await this.write(ustarHeader({ name: paxName, prefix: '', typeflag: 'x', mode: 0o644, uid: 0, gid: 0, size: records.length, mtime: 0n, linkname: '', devmajor: 0, devminor: 0 }));
      await this.write(padded(records));
      // Readers take the pax path; the ustar field only needs to be a harmless ASCII stand-in.
      if (pax.some(([k]) => k === 'path')) ustarName = name.replace(/[^\x20-\x7e]/g, '_').slice(-99);
    }
    await this.write(ustarHeader({
      name: ustarName, prefix, typeflag: TYPE_FLAG[header.type], mode: header.mode & 0o7777,
      uid: Math.min(header.uid, 0o7777777), gid: Math.min(header.gid, 0o7777777),
      size: header.type === 'file' ? Math.min(header.size, 0o77777777777) : 0,
      mtime: header.mtimeSec < 0n ? 0n : header.mtimeSec,
      linkname: header.linkname !== undefined && !split100(header.linkname) ? header.linkname : '',
      devmajor: header.devmajor ?? 0, devminor: header.devminor ?? 0,
    }));
    if (header.type !== 'file') return;
    let written = 0;
    if (data !== undefined) {
      for await (const chunk of data) {
        // A file that grew since its lstat keeps the size its header announced (the commit snapshot is frozen, so
        // this only guards against a misuse); one that shrank is padded with zeros below and reported by the caller.
        const take = chunk.length > header.size - written ? chunk.subarray(0, header.size - written) : chunk;
        if (take.length > 0) await this.write(take);
        written += take.length;
        if (written >= header.size) break;
      }
    }
    if (written < header.size) throw new Error(`${header.name} shrank while it was being read (${written} of ${header.size} bytes)`);
    const rest = (BLOCK - (header.size % BLOCK)) % BLOCK;
    if (rest > 0) await this.write(ZERO_BLOCK.subarray(0, rest));
  }

  /** The two zero blocks that end an archive. */
  async finish(): Promise<void> {
    await this.write(Buffer.concat([ZERO_BLOCK, ZERO_BLOCK]));
  }

  private async write(buf: Buffer): Promise<void> {
    // A reader that gave up (the store ran out of space, the export failed) destroys the stream: stop there.
    if (this.out.destroyed) throw this.out.errored ?? new Error('the tar output was closed before the archive was complete');
    this.bytes += buf.length;
    if (!this.out.write(buf)) {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error | null) => {
          this.out.off('drain', onDrain);
          this.out.off('error', onError);
          this.out.off('close', onClose);
          if (err) reject(err);
          else resolve();
        };
        const onDrain = () => done();
        const onError = (err: Error) => done(err);
        const onClose = () => done(this.out.errored ?? new Error('the tar output was closed before the archive was complete'));
        this.out.once('drain', onDrain);
        this.out.once('error', onError);
        this.out.once('close', onClose);
      });
    }
  }
}

function split100(linkname: string | undefined): boolean {
  return linkname !== undefined && Buffer.byteLength(linkname) > 100;
}

/** ustar's prefix/name split for names up to 255 bytes, or null when a pax path record is needed. */
function splitName(name: string): [string, string] | null {
  const bytes = Buffer.from(name);
  if (bytes.length > 256 || /[^\x20-\x7e]/.test(name)) return null;
  for (let i = name.indexOf('/'); i !== -1; i = name.indexOf('/', i + 1)) {
    if (i <= 155 && name.length - i - 1 <= 100 && name.length - i - 1 > 0) return [name.slice(0, i), name.slice(i + 1)];
  }
  return null;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

function padded(data: Buffer): Buffer {
  const rest = (BLOCK - (data.length % BLOCK)) % BLOCK;
  return rest === 0 ? data : Buffer.concat([data, Buffer.alloc(rest)]);
}

interface RawHeader {
  name: string; prefix: string; typeflag: string; mode: number; uid: number; gid: number; size: number; mtime: bigint;
  linkname: string; devmajor: number; devminor: number;
}

function ustarHeader(h: RawHeader): Buffer {
  const buf = Buffer.alloc(BLOCK);
  buf.write(h.name, 0, 100, 'utf8');
  octal(buf, 100, 8, BigInt(h.mode));
  octal(buf, 108, 8, BigInt(h.uid));
  octal(buf, 116, 8, BigInt(h.gid));
  octal(buf, 124, 12, BigInt(h.size));
  octal(buf, 136, 12, h.mtime > 0o77777777777n ? 0o77777777777n : h.mtime);
  buf.fill(0x20, 148, 156);
  buf.write(h.typeflag, 156, 1, 'latin1');
  buf.write(h.linkname, 157, 100, 'utf8');
  buf.write('ustar\u000000', 257, 8, 'latin1');
  octal(buf, 329, 8, BigInt(h.devmajor));
  octal(buf, 337, 8, BigInt(h.devminor));
  buf.write(h.prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const byte of buf) sum += byte;
  buf.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8, 'latin1');
  return buf;
}

function octal(buf: Buffer, offset: number, width: number, value: bigint): void {
  buf.write(`${value.toString(8).padStart(width - 1, '0')}\u0000`, offset, width, 'latin1');
}
