import { groupOf, type RegisterCommand } from '../context.js';

export const registerDrain: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('drain')
    .description('spawn nothing more for a group, at run time (as max_vm_total: 0); its VMs are still served and retired by their timeouts')
    .argument('<group>', 'group name (or its index in the config)')
    .action(async (groupArg: string) => {
      await withPool(async (vmm, cfg) => {
        const group = groupOf(cfg, groupArg);
        const name = group;
        const vms = (await vmm.getAllVmRecords()).filter((v) => v.group === group && v.state !== 'terminating').length;
        if (await vmm.drainGroup(group)) {
          io.out(`group ${name} drained: nothing is spawned for it; its ${vms} VM${vms === 1 ? ' is' : 's are'} still served and retired by their timeouts (undo: vmpool undrain ${name})\n`);
        } else {
          io.out(`group ${name} was already drained (since ${new Date((await vmm.drainedSince(group))!).toISOString()})\n`);
        }
      });
    });
};
