import type { VmManager } from '../../pool/vmManager.js';
import { QueueNames } from '../../../queues/names.js';
import { groupOf, parseSeconds, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

/** How long `vmpool down` waits by default, in seconds. */
const DOWN_TIMEOUT_S = 120;

/** Terminate workers connected to the pool's Redis (BullMQ reads CLIENT LIST); undefined when that is refused. */
async function terminateWorkers(vmm: VmManager): Promise<number | undefined> {
  try {
    return await vmm.queue(QueueNames.TERMINATE).getWorkersCount();
  } catch {
    return undefined;
  }
}

export const registerDown: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('down')
    .description('terminate every VM of the pool (or a group), reason operator, and wait until they are gone (terminate workers must run)')
    .option('--group <group>', 'group name (or its index in the config)')
    .option('--timeout <seconds>', `how long to wait (default ${DOWN_TIMEOUT_S})`, parseSeconds)
    .action(async (opts: { group?: string; timeout?: number }) => {
      await withPool(async (vmm, cfg) => {
        const group = opts.group === undefined ? undefined : groupOf(cfg, opts.group);
        const scope = group === undefined ? 'the pool' : `group ${group}`;
        const inScope = async () => (await vmm.getAllVmRecords()).filter((v) => group === undefined || v.group === group);
        const vms = await inScope();
        if (vms.length === 0) {
          io.out(`no VMs in ${scope}\n`);
          return;
        }
        let requested = 0;
        for (const vm of vms) if (await vmm.startVmTermination(vm.vmName, null, 'operator')) requested += 1;
        io.out(`terminating ${vms.length} VM${vms.length === 1 ? '' : 's'} of ${scope} (${vms.length - requested} already terminating)\n`);
        const startCmd = '`vmpool start terminate`, or the Procfile\'s terminate';
        if ((await terminateWorkers(vmm)) === 0) io.err(`no terminate worker is connected: the VMs stay terminating until one runs (${startCmd})\n`);
        const names = new Set(vms.map((v) => v.vmName));
        const timeoutS = opts.timeout ?? DOWN_TIMEOUT_S;
        const until = Date.now() + timeoutS * 1000;
        let now = vms;
        for (;;) {
          const left = now.filter((v) => names.has(v.vmName)).length;
          const fresh = now.length - left;
          const more = fresh ? ` (${fresh} new VM${fresh === 1 ? '' : 's'} appeared meanwhile: reconcile keeps min_ready and demand; stop it first to empty ${scope})` : '';
          if (left === 0) {
            io.out(`all ${names.size} VM${names.size === 1 ? ' is' : 's are'} gone${more}\n`);
            return;
          }
          if (Date.now() >= until) {
            const why =
              left === names.size
                ? `no VM went away within ${timeoutS} s: are terminate workers running? (${startCmd})`
                : `${left} of ${names.size} VMs still there after ${timeoutS} s (vmpool list --state terminating; reconcile asks again after vm_terminating_timeout)`;
            throw new CliError(`${why}${more}`, ExitCodes.ERROR);
          }
          await new Promise((resolve) => setTimeout(resolve, Math.min(500, Math.max(0, until - Date.now()))));
          now = await inScope();
        }
      });
    });
};
