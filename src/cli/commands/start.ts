import type { RegisterCommand } from '../context.js';
import { runStart, START_TYPES } from '../start.js';

export const registerStart: RegisterCommand = (program, ctx) => {
  program
    .command('start')
    .description(`run process types in this process (default: all of ${START_TYPES.join(', ')})`)
    .argument('[types...]', 'process types')
    .action(async (types: string[]) => {
      await runStart(types, ctx.configFile(), ctx.settings(), ctx.io);
    });
};
