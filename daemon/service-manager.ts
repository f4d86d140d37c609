/**
 * What systemd hears from a running stratad, beyond readiness: a STATUS= line that follows the mounts, and
 * WATCHDOG=1 pings sent from the event loop itself, so a loop stuck in a hung filesystem call stops the pings and
 * systemd restarts the daemon (WatchdogSec= in the unit).
 *
 * Invariant: nothing here blocks or throws; outside systemd every method is a no-op.
 */
import type { Logger } from '../lib/log.js';
import type { MountService } from '../lib/mounts/service.js';
import { watchdogIntervalMs, type SystemdNotifier } from './notify.js';

/** How often the status line is recomputed for changes the API did not cause (a helper crashing, a restart). */
const STATUS_REFRESH_MS = 2_000;

export class ServiceManagerLink {
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly logger: Logger;

  constructor(
    private readonly notifier: SystemdNotifier,
    private readonly mounts: MountService,
    private readonly socketPath: string,
    logger: Logger,
  ) {
    this.logger = logger.child({ component: 'service-manager' });
  }

  /** `serving SOCKET; N mount(s) live`, plus the mounts that are not as they should be. */
  statusText(): string {
    const views = this.mounts.list();
    const live = views.filter((m) => m.State.Running).length;
    const troubled = new Map<string, number>();
    for (const view of views) {
      const status: string = view.State.Status;
      if (status === 'failed' || status === 'restarting' || status === 'unhealthy') troubled.set(status, (troubled.get(status) ?? 0) + 1);
    }
    const extra = [...troubled].map(([status, n]) => `, ${n} ${status}`).join('');
    return `serving ${this.socketPath}; ${live} mount(s) live${extra}`;
  }

  refreshStatus(): Promise<void> {
    return this.notifier.statusIfChanged(this.statusText()).catch((err: unknown) => this.logger.warn({ err }, 'status update failed'));
  }

  /** Starts the periodic status refresh and, when systemd asked for one, the watchdog pings (at half its interval). */
  start(env: NodeJS.ProcessEnv): void {
    if (!this.notifier.enabled) return;
    this.timers.push(setInterval(() => void this.refreshStatus(), STATUS_REFRESH_MS).unref());
    const watchdogMs = watchdogIntervalMs(env);
    if (watchdogMs !== undefined) {
      this.logger.info({ watchdogMs }, 'systemd watchdog enabled');
      void this.notifier.watchdog();
      this.timers.push(setInterval(() => void this.notifier.watchdog(), Math.max(1, Math.floor(watchdogMs / 2))).unref());
    }
  }

  stop(): void {
    for (const timer of this.timers.splice(0)) clearInterval(timer);
  }
}
