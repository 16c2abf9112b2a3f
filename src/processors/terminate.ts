import type { Job } from 'bullmq';
import type { z } from 'zod';
import { VmDescriptorNotFound, VmStates } from '../pool/types.js';
import { TERMINATE_QUEUE, terminateJobSchema, type TerminateJobResult } from '../../queues/terminate.js';
import type { JobContext } from '../runtime/context.js';
import type { ProcessorSpec } from '../runtime/worker.js';

type TerminateData = z.output<typeof terminateJobSchema>;

/**
 * Terminates the machine with the group's provider, then removes the record. Only a VM in
 * `terminating` is touched. If the provider fails, the job retries with backoff and the VM stays
 * terminating, so reconcile's terminateAgain asks again later.
 */
async function processTerminate(job: Job, data: TerminateData, ctx: JobContext): Promise<TerminateJobResult> {
  const { vmName, reason } = data;
  const log = (line: string) => job.log(line).then(() => undefined);
  let vm;
  try {
    vm = await ctx.vmm.getVmByName(vmName);
  } catch (err) {
    if (!(err instanceof VmDescriptorNotFound)) throw err;
    vm = null;
  }
  if (data.orphan && (vm === null || (data.orphan.vmIp !== null && vm.vmIp !== data.orphan.vmIp))) {
    // A machine the pool has no record of, or another machine under the name of a pool VM (a hook
    // that reused a name): end it by its own name and address, and leave the pool's record alone.
    const group = await ctx.vmm.payloadGroup(data.orphan.group);
    await ctx.vmm.knownGroupConfig(group);
    const what = vm === null ? 'unknown to the pool' : `reported under the name of pool VM ${vmName} (${vm.vmIp})`;
    await log(`terminating machine ${vmName} at ${data.orphan.vmIp ?? 'no address'} ${what} (${reason}) in group ${group}`);
    await ctx.provider(group).terminate({ group: ctx.vmm.providerGroup(group), vmName, vmIp: data.orphan.vmIp, log });
    return { vmName, removed: false };
  }
  if (vm === null) {
    await log('VM is no longer in the pool; nothing to do');
    return { vmName, removed: false };
  }
  if (vm.state !== VmStates.TERMINATING) {
    await log(`VM is ${vm.state}, not terminating; left alone`);
    return { vmName, removed: false };
  }
  // A group removed from the config is terminated with the config reconcile last published.
  await ctx.vmm.knownGroupConfig(vm.group);
  await log(`terminating ${vmName} (${vm.vmIp}) in group ${vm.group}, reason ${reason}, attempt ${job.attemptsMade + 1}`);
  await ctx.provider(vm.group).terminate({ group: ctx.vmm.providerGroup(vm.group), vmName, vmIp: vm.vmIp, log });
  try {
    await ctx.vmm.removeVmFromPool(vmName);
  } catch (err) {
    if (err instanceof VmDescriptorNotFound) return { vmName, removed: false };
    throw err;
  }
  await log('terminated and removed from the pool');
  ctx.logger.info({ vmName, reason }, 'VM terminated');
  return { vmName, removed: true };
}

export const terminateProcessor: ProcessorSpec<TerminateData, TerminateJobResult> = {
  queue: TERMINATE_QUEUE,
  schema: terminateJobSchema,
  process: processTerminate,
};
