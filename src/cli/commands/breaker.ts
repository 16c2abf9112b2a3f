import { groupSummaries } from '../../poolView.js';
import { breakerLines, groupOf, type RegisterCommand } from '../context.js';

export const registerBreaker: RegisterCommand = (program, { io, withPool, print }) => {
  const breakerCommand = program.command('breaker').description("the groups' spawn circuit breakers");
  breakerCommand
    .command('show', { isDefault: true })
    .description('print the open breakers (exit 0 either way)')
    .option('--json', 'as JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(async (vmm) => {
        const open = (await groupSummaries(vmm)).filter((g) => g.breaker !== null).map((g) => ({ group: g.name, ...g.breaker! }));
        const lines = await breakerLines(vmm);
        print(opts.json === true, open, () => (lines.length ? lines.join('\n') : 'every breaker is closed'));
      }, { reads: true });
    });
  breakerCommand
    .command('reset')
    .description('close a group\'s breaker once what opened it is fixed (reconcile spawns again at its next cycle)')
    .argument('<group>', 'group name (or its index in the config)')
    .action(async (groupArg: string) => {
      await withPool(async (vmm, cfg) => {
        const group = groupOf(cfg, groupArg);
        await vmm.resetBreaker(group);
        io.out(`breaker of group ${group} closed\n`);
      });
    });
};
