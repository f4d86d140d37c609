/**
 * Log lines straight into the systemd journal (its native protocol, systemd.journal-fields(7)), so every field of
 * a pino line becomes a journal field: `journalctl -u stratad MOUNT=web` finds one mount's lines.
 *
 * Used only when stderr is the journal (JOURNAL_STREAM names stderr's device and inode, as systemd sets it for
 * StandardError=journal); otherwise stratad logs JSON lines on stderr as before. A line the journal socket will not
 * take (too big, socket gone) is written to stderr instead, so nothing is dropped.
 */
import { fstatSync, writeSync } from 'node:fs';
import { unixDgramSocket, type UnixDgramSocket } from './notify.js';

export const JOURNAL_SOCKET = '/run/systemd/journal/socket';

/** pino's numeric levels to syslog priorities. */
function priorityOf(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

/** `mountId` → `MOUNT_ID`: journal field names are upper case, digits and underscores, not starting with `_`. */
export function journalFieldName(key: string): string | undefined {
  const name = key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[^A-Za-z0-9_]/g, '_').toUpperCase().replace(/^_+/, '');
  return name === '' || /^[0-9]/.test(name) ? undefined : name.slice(0, 64);
}

/** Keys of a pino line that are not fields of their own (the journal has its own time, pid and host). */
const SKIPPED_KEYS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', 'v']);

/** One native-protocol datagram: `KEY=value\n`, or `KEY\n<u64 le length><value>\n` for values with newlines. */
export function encodeJournalEntry(fields: ReadonlyArray<readonly [string, string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, value] of fields) {
    if (!value.includes('\n')) {
      parts.push(Buffer.from(`${key}=${value}\n`));
      continue;
    }
    const data = Buffer.from(value);
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(data.length));
    parts.push(Buffer.from(`${key}\n`), length, data, Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

/** The journal fields of one pino JSON line. */
export function journalFieldsOf(line: string, identifier: string): Array<[string, string]> {
  const record = JSON.parse(line) as Record<string, unknown>;
  const err = record.err as { message?: string } | undefined;
  const message = String(record.msg ?? '') + (err?.message ? `: ${err.message}` : '');
  const fields: Array<[string, string]> = [
    ['MESSAGE', message],
    ['PRIORITY', String(priorityOf(Number(record.level ?? 30)))],
    ['SYSLOG_IDENTIFIER', identifier],
  ];
  for (const [key, value] of Object.entries(record)) {
    if (SKIPPED_KEYS.has(key) || value === null || typeof value === 'object') continue;
    const name = journalFieldName(key);
    if (name !== undefined && !['MESSAGE', 'PRIORITY', 'SYSLOG_IDENTIFIER'].includes(name)) fields.push([name, String(value)]);
  }
  // The whole line too, so structured values (errors, lists) are not lost.
  fields.push(['STRATA_JSON', line.trimEnd()]);
  return fields;
}

/** True when systemd connected our stderr to the journal. */
export function stderrIsJournal(env: NodeJS.ProcessEnv): boolean {
  const stream = env.JOURNAL_STREAM;
  if (stream === undefined || !stream.includes(':')) return false;
  try {
    const st = fstatSync(2, { bigint: true });
    const [dev, ino] = stream.split(':');
    return BigInt(dev!) === st.dev && BigInt(ino!) === st.ino;
  } catch {
    return false;
  }
}

/** A pino destination (anything with write(line)) that sends each line to the journal. */
export class JournalDestination {
  private readonly socket: UnixDgramSocket;

  constructor(private readonly identifier: string, private readonly socketPath = JOURNAL_SOCKET) {
    this.socket = unixDgramSocket();
    this.socket.on('error', () => undefined);
  }

  write(line: string): void {
    let sent = false;
    try {
      const entry = encodeJournalEntry(journalFieldsOf(line, this.identifier));
      this.socket.send(entry, 0, entry.length, this.socketPath, (err) => {
        sent = err === undefined || err === null;
      });
    } catch {
      sent = false;
    }
    if (!sent) writeSync(2, line);
  }
}
