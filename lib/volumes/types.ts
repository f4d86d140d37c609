/** The volume records and views shared by the store, the service, the API and the CLI. */

/** The persistent record of a volume (LevelDB `volumes` sublevel, keyed by Name). */
export interface VolumeRecord {
  Name: string;
  Driver: 'local';
  CreatedAt: string;
  Labels: Record<string, string>;
  /** The local driver's options (`type`, `device`, `o`), as `docker volume create --opt` takes them. */
  Options: Record<string, string>;
}

/**
 * One holder of a volume (LevelDB `volumeRefs` sublevel, key `<volume>|<mountId>`). Written in the same batch as the
 * mount record that holds it, so the two cannot disagree after a crash.
 */
export interface VolumeRef {
  Volume: string;
  MountId: string;
  MountName: string;
  Since: string;
}

/** The API/CLI view of a volume (Docker's volume inspect shape, plus who uses it). */
export interface VolumeView {
  Name: string;
  Driver: 'local';
  Mountpoint: string;
  CreatedAt: string;
  Labels: Record<string, string>;
  Options: Record<string, string>;
  Scope: 'local';
  /** Names of the mounts holding the volume. */
  UsedBy: string[];
  /** Size is -1 unless asked for (it walks the whole tree). */
  UsageData: { Size: number; RefCount: number };
}

/** The label Docker (23+) puts on anonymous volumes; `volume prune` without --all removes only these. */
export const ANONYMOUS_LABEL = 'com.docker.volume.anonymous';

/** `[a-zA-Z0-9][a-zA-Z0-9_.-]+`: never a path, never "." or "..", at least two characters (Docker's rule). */
export const VOLUME_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;
export const MAX_VOLUME_NAME = 255;
