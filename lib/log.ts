/**
 * Logger construction. Nothing here is a singleton: each program builds one root logger and passes
 * child loggers (per component, per mount) down to the objects it creates.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

const LEVELS: readonly string[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function isLogLevel(value: string): value is LevelWithSilent {
  return LEVELS.includes(value);
}

/** A JSON logger on stderr (fd 2), so stdout stays free for command output. */
export function createLogger(options: { level?: string; name?: string; destinationFd?: number; destination?: { write(line: string): void } } = {}): Logger {
  const level = options.level ?? process.env.STRATA_LOG_LEVEL ?? 'warn';
  if (!isLogLevel(level)) throw new Error(`unknown log level "${level}" (use one of ${LEVELS.join(', ')})`);
  const destination = options.destination ?? pino.destination({ fd: options.destinationFd ?? 2, sync: true });
  return pino({ level, name: options.name, base: { pid: process.pid } }, destination);
}
