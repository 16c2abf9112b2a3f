import type { RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerTerminate: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('terminate')
    .description('request termination of a VM (reason operator)')
    .argument('<name>')
    .action(async (name: string) => {
      await withPool(async (vmm) => {
        if (!(await vmm.startVmTermination(name, null, 'operator'))) throw new CliError(`VM ${name} is already terminating`, ExitCodes.ERROR);
        io.out(`terminating ${name}\n`);
      });
    });
};
