import type { Job } from 'bullmq';
import type { z } from 'zod';
import { VmDescriptorNotFound } from '../pool/types.js';
import { HEALTH_QUEUE, healthJobSchema, type HealthJobResult } from '../../queues/health.js';
import type { JobContext } from '../runtime/context.js';
import type { ProcessorSpec } from '../runtime/worker.js';

type HealthData = z.output<typeof healthJobSchema>;

/**
 * One health check: startVmCheck, the group's check bounded by vm_ssh_check_timeout, then
 * recordHealthCheckResult (which starts termination once the fail threshold is crossed).
 * A VM that vanished or is not checkable now is a result, not a failure.
 */
async function processHealth(job: Job, data: HealthData, ctx: JobContext): Promise<HealthJobResult> {
  const { vmName } = data;
  const log = (line: string) => job.log(line).then(() => undefined);
  try {
    const vm = await ctx.vmm.getVmByName(vmName);
    if (!(await ctx.vmm.startVmCheck(vmName))) {
      await log(`not checked: VM is ${vm.state}`);
      return { vmName, ok: false, outcome: 'skipped', detail: `state ${vm.state}` };
    }
    const groupConfig = await ctx.vmm.knownGroupConfig(vm.group);
    const result = await ctx
      .healthCheck(vm.group)
      .check(
        { vmName, vmIp: vm.vmIp, group: ctx.vmm.providerGroup(vm.group) },
        { timeoutMs: groupConfig.vm_ssh_check_timeout * 1000, log },
      );
    await log(`${result.ok ? 'healthy' : 'unhealthy'}: ${result.detail}`);
    const record = await ctx.vmm.recordHealthCheckResult(vmName, result.ok);
    return { vmName, ok: result.ok, outcome: record.outcome, detail: result.detail };
  } catch (err) {
    if (err instanceof VmDescriptorNotFound) {
      await log('VM is no longer in the pool');
      return { vmName, ok: false, outcome: 'missing', detail: 'VM is no longer in the pool' };
    }
    throw err;
  }
}

export const healthProcessor: ProcessorSpec<HealthData, HealthJobResult> = {
  queue: HEALTH_QUEUE,
  schema: healthJobSchema,
  process: processHealth,
};
