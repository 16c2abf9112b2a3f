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
    if (data.orphan) {
      const group = data.orphan.group;
      await log(`terminating machine ${vmName} unknown to the pool (${reason}) in group ${group}`);
      await ctx.provider(group).terminate({ group: { id: group, config: ctx.vmm.groupConfig(group) }, vmName, vmIp: data.orphan.vmIp, log });
      return { vmName, removed: false };
    }
    await log('VM is no longer in the pool; nothing to do');
    return { vmName, removed: false };
  }
  if (vm.state !== VmStates.TERMINATING) {
    await log(`VM is ${vm.state}, not terminating; left alone`);
    return { vmName, removed: false };
  }
  await log(`terminating ${vmName} (${vm.vmIp}) in group ${vm.group}, reason ${reason}, attempt ${job.attemptsMade + 1}`);
  await ctx.provider(vm.group).terminate({ group: { id: vm.group, config: ctx.vmm.groupConfig(vm.group) }, vmName, vmIp: vm.vmIp, log });
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
