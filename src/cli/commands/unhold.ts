import type { RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerUnhold: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('unhold')
    .description('end a hold; the VM can be acquired again')
    .argument('<name>')
    .action(async (name: string) => {
      await withPool(async (vmm) => {
        if (!(await vmm.unholdVm(name))) throw new CliError(`VM ${name} is not held`, ExitCodes.ERROR);
        io.out(`unheld ${name}\n`);
      });
    });
};
