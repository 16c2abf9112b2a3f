import { Option } from 'commander';
import { ALL_VM_STATES, isVmState, type VmRecord, type VmState } from '../../pool/types.js';
import { withoutLease } from '../../poolView.js';
import { textTable } from '../../text/table.js';
import { relativeTime } from '../../time.js';
import { groupOf, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerList: RegisterCommand = (program, { withPool, print }) => {
  program
    .command('list')
    .description('list VMs')
    .option('--group <group>', 'group name (or its index in the config)')
    .addOption(new Option('--state <state>', 'VM state').choices([...ALL_VM_STATES]))
    .option('--owner <owner>', 'only VMs of this owner')
    .option('--limit <n>', 'show at most n VMs (in name order)')
    .option('--json', 'as JSON')
    .action(async (opts: { group?: string; state?: string; owner?: string; limit?: string; json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const group = opts.group === undefined ? undefined : groupOf(cfg, opts.group);
        if (opts.state !== undefined && !isVmState(opts.state)) throw new CliError(`unknown state ${opts.state}`, ExitCodes.USAGE);
        const max = opts.limit === undefined ? Infinity : Number(opts.limit);
        if (opts.limit !== undefined && (!/^\d+$/.test(opts.limit) || max < 1)) throw new CliError(`--limit must be a whole number from 1, not ${opts.limit}`, ExitCodes.USAGE);
        const now = vmm.clock();
        // Page by page through the indexes, as GET /api/v1/vms does.
        const vms: VmRecord[] = [];
        let cursor: string | undefined;
        do {
          const page = await vmm.listVms({ group, state: opts.state as VmState | undefined, owner: opts.owner, cursor, limit: Math.min(500, max - vms.length) });
          vms.push(...page.vms);
          cursor = page.next ?? undefined;
        } while (cursor !== undefined && vms.length < max);
        print(opts.json === true, vms.map((v) => withoutLease(v)), () =>
          textTable(
            ['NAME', 'GROUP', 'STATE', 'IP', 'OWNER', 'SANDBOX', 'BUILDS', 'FAILS', 'LAST CHECK', 'TASK', 'HELD BY'],
            vms.map((v) => [
              v.vmName,
              v.group,
              v.state,
              v.vmIp,
              v.owner ?? '-',
              v.sandbox ?? '-',
              String(v.buildsCount),
              String(v.checkFails),
              relativeTime(v.lastHealthCheck, now),
              v.taskId ?? '-',
              v.heldBy ?? '-',
            ]),
          ),
        );
      }, { reads: true });
    });
};
