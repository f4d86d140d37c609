/** Every command group of the `strata` CLI. Add one import and one entry per group. */
import type { CommandModule } from 'yargs';
import { imageCommand } from './image.js';
import { infoCommand } from './info.js';
import { layerCommand } from './layer.js';
import { mountCommand } from './mount.js';
import { fsckCommand, systemCommand } from './system.js';
import { volumeCommand } from './volume.js';
import { loginCommand, logoutCommand } from './registry.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commandGroups: CommandModule<any, any>[] = [mountCommand, infoCommand, imageCommand, layerCommand, volumeCommand, systemCommand, fsckCommand, loginCommand, logoutCommand];
