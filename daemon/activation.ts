/**
 * systemd socket activation (sd_listen_fds(3)) without libsystemd: a socket unit passes its listening sockets as
 * fds 3.. and names how many in LISTEN_FDS, for the pid in LISTEN_PID.
 *
 * The variables are removed from our environment once read (sd_listen_fds's unset_environment), so the mount
 * helpers stratad starts never believe the fds were meant for them.
 */
export const SD_LISTEN_FDS_START = 3;

export interface ActivationSockets {
  fds: number[];
  names: string[];
}

export function takeListenFds(env: NodeJS.ProcessEnv, pid = process.pid): ActivationSockets | undefined {
  const listenPid = Number.parseInt(env.LISTEN_PID ?? '', 10);
  const count = Number.parseInt(env.LISTEN_FDS ?? '', 10);
  const names = (env.LISTEN_FDNAMES ?? '').split(':').filter((n) => n !== '');
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (listenPid !== pid || !Number.isInteger(count) || count <= 0) return undefined;
  return { fds: Array.from({ length: count }, (_, i) => SD_LISTEN_FDS_START + i), names };
}
