/** Every command group of the `strata` CLI. Add one import and one entry per group. */
import type { CommandModule } from 'yargs';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commandGroups: CommandModule<any, any>[] = [];
