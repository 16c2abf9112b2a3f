import { isValidVmIp, isValidVmName } from '../../pool/types.js';
import { groupOf, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerAdd: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('add')
    .description('register an existing machine (state got_ip; reconcile health-checks it)')
    .argument('<ip>')
    .argument('<name>')
    .argument('<group>', 'group name (or its index in the config)')
    .action(async (ip: string, name: string, groupArg: string) => {
      if (!isValidVmIp(ip)) throw new CliError(`invalid IP address ${JSON.stringify(ip)}`, ExitCodes.USAGE);
      if (!isValidVmName(name)) throw new CliError(`invalid VM name ${JSON.stringify(name)}: 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit`, ExitCodes.USAGE);
      await withPool(async (vmm, cfg) => {
        const vm = await vmm.addVmToPool(ip, name, groupOf(cfg, groupArg));
        io.out(`added ${vm.vmName} (${vm.vmIp}) to group ${vm.group}: ${vm.state}\n`);
      });
    });
};
