import { InvalidVmRequest } from '../../pool/types.js';
import { parseDuration } from '../../time.js';
import { safeUser, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerAutohold: RegisterCommand = (program, { io, withPool, print }) => {
  const autohold = program.command('autohold').description("autohold rules: keep the VMs of the next failed builds that match (Zuul's autohold)");
  autohold
    .command('add')
    .description('hold the VMs of the next COUNT failed builds that match, instead of recycling them')
    .requiredOption('--reason <text>', 'why (shown with each hold)')
    .option('--count <n>', 'how many failed builds\' VMs to hold', '1')
    .option('--owner <glob>', 'owner pattern (* any run of characters, ? one)', '*')
    .option('--sandbox <glob>', 'sandbox pattern', '*')
    .option('--group <glob>', 'group name pattern', '*')
    .option('--for <duration>', 'how long each VM is held: 90s, 30m, 2h, 1d (default: until unheld, or max_hold_age)')
    .option('--by <who>', 'who adds the rule', `${safeUser()}@cli`)
    .option('--json', 'as JSON')
    .action(async (opts: { reason: string; count: string; owner: string; sandbox: string; group: string; for?: string; by: string; json?: boolean }) => {
      if (!/^[0-9]+$/.test(opts.count)) throw new CliError(`--count: a whole number, not ${JSON.stringify(opts.count)}`, ExitCodes.USAGE);
      const duration = opts.for === undefined ? undefined : parseDuration(opts.for);
      if (duration === null) throw new CliError(`--for: not a duration: ${JSON.stringify(opts.for)} (use 90s, 30m, 2h or 1d)`, ExitCodes.USAGE);
      await withPool(async (vmm) => {
        let rule;
        try {
          rule = await vmm.autoholds.add(
            { owner: opts.owner, sandbox: opts.sandbox, group: opts.group, count: Number(opts.count), reason: opts.reason, ...(duration !== undefined ? { for: duration / 1000 } : {}) },
            opts.by,
          );
        } catch (err) {
          if (err instanceof InvalidVmRequest) throw new CliError(err.message, ExitCodes.USAGE);
          throw err;
        }
        print(opts.json === true, rule, () => `autohold rule ${rule.id} added: ${ruleLine(rule)}`);
      });
    });
  autohold
    .command('list', { isDefault: true })
    .description('print the rules with a count left')
    .option('--json', 'as JSON')
    .action(async (opts: { json?: boolean }) => {
      await withPool(async (vmm) => {
        const rules = await vmm.autoholds.list();
        print(opts.json === true, rules, () => (rules.length ? rules.map((r) => `${r.id}  ${ruleLine(r)}`).join('\n') : 'no autohold rules'));
      });
    });
  autohold
    .command('delete')
    .description('delete a rule (VMs it holds stay held: `vmpool unhold` them)')
    .argument('<id>', 'the rule id (`vmpool autohold list`)')
    .action(async (id: string) => {
      if (!/^[1-9][0-9]{0,15}$/.test(id)) throw new CliError(`an autohold rule id is a positive integer, not ${JSON.stringify(id)}`, ExitCodes.USAGE);
      await withPool(async (vmm) => {
        if (!(await vmm.autoholds.delete(Number(id)))) throw new CliError(`no autohold rule ${id}`, ExitCodes.NOT_FOUND);
        io.out(`autohold rule ${id} deleted\n`);
      });
    });
};

function ruleLine(r: { owner: string; sandbox: string; group: string; count: number; for?: number; reason: string; by: string }): string {
  const holdFor = r.for === undefined ? 'until unheld' : `for ${r.for} s`;
  return `owner=${r.owner} sandbox=${r.sandbox} group=${r.group} count=${r.count} ${holdFor} by ${r.by}: ${r.reason}`;
}
