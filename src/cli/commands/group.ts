import { groupOf, type RegisterCommand } from '../context.js';

export const registerGroup: RegisterCommand = (program, { io, withPool }) => {
  const groupCommand = program.command('group').description('operations on a whole group');
  groupCommand
    .command('rename')
    .description(
      'rename a group in place, with its VMs, leases and waiting requests (under the reconcile lock); then deploy the config with the new name: ' +
        'while a config still names the old one, that is a new, empty group again',
    )
    .argument('<old>', 'the group to rename (its name, or its index in the config)')
    .argument('<new>', 'its new name')
    .action(async (oldArg: string, newName: string) => {
      await withPool(async (vmm, cfg) => {
        // An old name the config no longer has is a group that drains: taken by name.
        const from = cfg.groups.some((g) => g.name === oldArg) || /^\d+$/.test(oldArg) ? groupOf(cfg, oldArg) : oldArg;
        const renamed = await vmm.renameGroup(from, newName);
        io.out(`group ${renamed.from} renamed to ${renamed.to} with its ${renamed.vms} VM${renamed.vms === 1 ? '' : 's'}; deploy the config with "${renamed.to}" now (until then, a config naming "${renamed.from}" makes it a new, empty group)\n`);
      });
    });
};
