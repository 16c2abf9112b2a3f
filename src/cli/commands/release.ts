import type { RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerRelease: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('release')
    .description('release an in_use VM (it stays bound to its owner and sandbox)')
    .argument('<name>')
    .option('--lease-id <id>', 'only if the VM still holds this lease')
    .action(async (name: string, opts: { leaseId?: string }) => {
      await withPool(async (vmm) => {
        if (!(await vmm.releaseVm(name, opts.leaseId))) {
          const vm = await vmm.getVmRecord(name);
          throw new CliError(`VM ${name} is ${vm.state}, not in_use; nothing released`, ExitCodes.ERROR);
        }
        io.out(`released ${name}\n`);
      });
    });
};
