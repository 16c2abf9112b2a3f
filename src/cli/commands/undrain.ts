import { groupOf, type RegisterCommand } from '../context.js';

export const registerUndrain: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('undrain')
    .description('end a run-time drain: reconcile spawns for the group again')
    .argument('<group>', 'group name (or its index in the config)')
    .action(async (groupArg: string) => {
      await withPool(async (vmm, cfg) => {
        const group = groupOf(cfg, groupArg);
        const g = vmm.groupConfig(group);
        const note = g.max_vm_total === 0 ? '; its config still sets max_vm_total: 0, so it spawns nothing' : '';
        if (await vmm.undrainGroup(group)) io.out(`group ${g.name} undrained${note}\n`);
        else io.out(`group ${g.name} was not drained${note}\n`);
      });
    });
};
