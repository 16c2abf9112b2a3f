import { groupSummaries } from '../../poolView.js';
import { breakerLines, type RegisterCommand } from '../context.js';

export const registerInfo: RegisterCommand = (program, { io, withPool, print }) => {
  program
    .command('info')
    .description("print the pool table per group (Copr's copr_get_vm_info)")
    .option('--json', 'groups and VMs as JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(async (vmm) => {
        if (opts.json) {
          const vms = await vmm.getAllVmRecords();
          print(true, { groups: await groupSummaries(vmm, vms), vms }, () => '');
        } else {
          io.out(`${await vmm.info()}\n`);
          for (const line of await breakerLines(vmm)) io.out(`${line}\n`);
        }
      }, { reads: true });
    });
};
