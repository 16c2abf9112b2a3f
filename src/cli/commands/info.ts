import type { VmManager } from '../../pool/vmManager.js';
import { groupSummaries } from '../../poolView.js';
import { breakerLines, type RegisterCommand } from '../context.js';

/** One line per group: its current launch fingerprint, the VMs on older ones, and processes with another config. */
async function launchLines(vmm: VmManager): Promise<string[]> {
  return (await groupSummaries(vmm)).map(({ name, launch: l }) => {
    if (l.current === null) return `Group ${name}: launch ${l.configured} (not published yet)`;
    const mine = l.configured !== l.current ? `; this config: ${l.configured}` : '';
    const others = l.deferring.length ? `; ${l.deferring.length} process(es) with another config decide nothing for it` : '';
    return `Group ${name}: launch ${l.current} (revision ${l.revision}), ${l.outdated} VM(s) on older launches${mine}${others}`;
  });
}

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
          for (const line of await launchLines(vmm)) io.out(`${line}\n`);
        }
      }, { reads: true });
    });
};
