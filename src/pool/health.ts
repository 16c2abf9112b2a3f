import type { PoolContext } from './context.js';
import type { PoolJobs } from './jobs.js';
import type { HealthCheckRecord } from './types.js';

/** Health checks of VMs, their host keys, and the server start that makes every VM checked again. */
export class Health {
  constructor(
    private readonly ctx: PoolContext,
    private readonly jobs: PoolJobs,
  ) {}

  async startVmCheck(vmName: string): Promise<boolean> {
    return this.ctx.scripts.startVmCheck(vmName, this.ctx.clock());
  }

  /** Records a check's result; a VM over its group's vm_max_check_fails is terminated. */
  async recordHealthCheckResult(vmName: string, ok: boolean): Promise<HealthCheckRecord> {
    const now = this.ctx.clock();
    // Every group's threshold goes along, so the script needs no read of the VM's group first.
    const maxFails = new Map([...this.ctx.config.groups, ...this.ctx.removedGroups.values()].map((g) => [g.name, g.vm_max_check_fails]));
    const record = await this.ctx.scripts.recordHealthCheckResult(vmName, ok, now, maxFails);
    const { outcome, vm } = record;
    if (outcome === 'terminating') {
      this.ctx.logger.warn({ vmName, checkFails: vm.checkFails, maxFails: maxFails.get(vm.group) ?? 0 }, 'VM failed too many health checks');
      await this.jobs.enqueueTermination(vmName, now, 'health_check_failed');
    } else if (outcome === 'failed') {
      this.ctx.logger.warn({ vmName, checkFails: vm.checkFails }, 'VM health check failed');
    }
    return record;
  }

  async markVmCheckFailed(vmName: string): Promise<boolean> {
    return this.ctx.scripts.markVmCheckFailed(vmName);
  }

  /** See VmManager.failCheckOnAcquire. */
  async failCheckOnAcquire(vmName: string, leaseId: string, jobId: string, detail: string): Promise<boolean> {
    const now = this.ctx.clock();
    const taken = await this.ctx.scripts.failCheckOnAcquire(vmName, leaseId, now, jobId, detail);
    if (taken) {
      this.ctx.logger.warn({ vmName, detail }, 'VM failed its check at hand-over');
      await this.jobs.enqueueTermination(vmName, now, 'check_on_acquire');
    }
    return taken;
  }

  /** See VmManager.rememberHostKey. */
  async rememberHostKey(vmName: string, vmIp: string, offered: string): Promise<string | null> {
    return this.ctx.scripts.rememberHostKey(vmName, vmIp, offered);
  }

  /** Records the server start: VMs checked before it are not handed out until checked again. */
  async markServerStart(): Promise<void> {
    await this.ctx.scripts.markServerStart(this.ctx.clock());
  }

  async serverStart(): Promise<number | null> {
    return this.ctx.reader.serverStart();
  }
}
