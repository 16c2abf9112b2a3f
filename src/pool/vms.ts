import { launchFingerprint } from '../config/fingerprint.js';
import type { TerminationReason } from '../../queues/terminate.js';
import { ownerOverLimit, ownerUsageLimited, ownerUsageSpec, ownerVmLimit } from '../reconcile/quota.js';
import type { PoolContext } from './context.js';
import type { PoolJobs } from './jobs.js';
import type { VmPage, VmPageQuery } from './poolReader.js';
import { SPAWN_RECORD_TTL_MS } from './spawns.js';
import {
  ALL_VM_STATES,
  InvalidVmRequest,
  VmDescriptorNotFound,
  isValidVmIp,
  isValidVmName,
  isVmState,
  type VmDescriptor,
  type VmRecord,
  type VmState,
} from './types.js';

/** The pool's VMs: adding, looking up, terminating and removing them. */
export class PoolVms {
  constructor(
    private readonly ctx: PoolContext,
    private readonly jobs: PoolJobs,
  ) {}

  /** See VmManager.addVmToPool. */
  async addVmToPool(vmIp: string, vmName: string, group: string, options: { spawnId?: string; spawnStartedAt?: number } = {}): Promise<VmDescriptor> {
    if (!isValidVmName(vmName)) {
      throw new InvalidVmRequest(`invalid VM name ${JSON.stringify(vmName)}: expected 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit`);
    }
    if (!isValidVmIp(vmIp)) throw new InvalidVmRequest(`invalid IP address ${JSON.stringify(vmIp)} for VM ${vmName}`);
    const groupConfig = this.ctx.groupConfig(group);
    const { spawnId, spawnStartedAt } = options;
    // A spawned VM was made by this process's config of the group; one added by hand has no known launch.
    const launch = spawnId ? launchFingerprint(groupConfig) : '';
    await this.ctx.scripts.addVm(
      vmName,
      vmIp,
      group,
      this.ctx.clock(),
      spawnId || spawnStartedAt !== undefined ? { spawnId: spawnId ?? '', recordTtlMs: SPAWN_RECORD_TTL_MS, startedAt: spawnStartedAt } : undefined,
      launch,
    );
    this.ctx.logger.info({ vmName, vmIp, group, spawnId, launch: launch || undefined }, 'VM added to pool');
    return this.getVmByName(vmName);
  }

  async getVmByName(vmName: string): Promise<VmDescriptor> {
    const vm = typeof vmName === 'string' && vmName !== '' ? await this.ctx.reader.vmDescriptor(vmName) : null;
    if (!vm) throw new VmDescriptorNotFound(String(vmName));
    return vm;
  }

  async getVmsByNames(names: readonly string[]): Promise<VmDescriptor[]> {
    return this.ctx.reader.vmDescriptors(names);
  }

  async lookupVmsByIp(vmIp: string): Promise<VmDescriptor[]> {
    if (typeof vmIp !== 'string' || vmIp === '') return [];
    return this.getVmsByNames(await this.ctx.reader.vmNamesByIp(vmIp));
  }

  async getVmByTaskId(taskId: string | number, owner?: string): Promise<VmDescriptor | null> {
    if (typeof taskId === 'number' && Number.isFinite(taskId)) taskId = String(taskId);
    if (typeof taskId !== 'string' || taskId === '') return null;
    if (owner !== undefined) {
      const name = await this.ctx.reader.vmNameOfTask(owner, taskId);
      const [vm] = name ? await this.getVmsByNames([name]) : [];
      return vm && vm.taskId === taskId && vm.owner === owner && vm.state === 'in_use' ? vm : null;
    }
    // Task ids are per owner: without one, the in-use VMs of every group are searched (first by name).
    const names = (await this.ctx.reader.vmNamesByGroupsAndStates(this.ctx.vmGroups, ['in_use'])).sort();
    const vms = await this.getVmsByNames(names);
    return vms.find((vm) => vm.taskId === taskId) ?? null;
  }

  async getVmsByGroupAndStates(group: string | null, states: readonly VmState[]): Promise<VmDescriptor[]> {
    for (const s of states) if (!isVmState(s)) throw new InvalidVmRequest(`unknown VM state ${JSON.stringify(s)}`);
    if (states.length === 0) return [];
    if (group !== null) this.ctx.groupConfig(group);
    return this.getVmsByNames(await this.ctx.reader.vmNamesByGroupsAndStates(group === null ? this.ctx.vmGroups : [group], states));
  }

  async getAllVmsInGroup(group: string): Promise<VmDescriptor[]> {
    return this.getVmsByGroupAndStates(group, ALL_VM_STATES);
  }

  async getAllVms(): Promise<VmDescriptor[]> {
    return this.getVmsByNames(await this.ctx.reader.allVmNames());
  }

  async listVms(query: VmPageQuery): Promise<VmPage> {
    return this.ctx.reader.vmPage(query, [...this.ctx.vmGroups, ...this.ctx.removedGroups.keys()]);
  }

  async getAllVmRecords(): Promise<VmRecord[]> {
    return this.ctx.reader.vmRecords(await this.ctx.reader.allVmNames());
  }

  async getVmRecord(vmName: string): Promise<VmRecord> {
    const vm = typeof vmName === 'string' && vmName !== '' ? await this.ctx.reader.vmRecord(vmName) : null;
    if (!vm) throw new VmDescriptorNotFound(String(vmName));
    return vm;
  }

  /** Number of VMs of the group (any state) that belong to the owner. */
  async countOwnerVms(owner: string, group: string): Promise<number> {
    this.ctx.groupConfig(group);
    return this.ctx.reader.ownerVmCount(group, owner);
  }

  /** Whether the owner is under the group's max_vm_per_user and max_resources_per_owner, and one more VM of the group fits its limits across groups. */
  async ownerMayAcquireMore(owner: string, group: string): Promise<boolean> {
    const gc = this.ctx.groupConfig(group);
    if ((await this.countOwnerVms(owner, group)) >= ownerVmLimit(gc)) return false;
    const spec = ownerUsageSpec(this.ctx.config, gc);
    if (!ownerUsageLimited(spec)) return true;
    const usage = await this.ctx.reader.ownerUsage(owner, spec.s.map((s) => s.n));
    return ownerOverLimit(spec, usage) === null;
  }

  /** See VmManager.backfillOwnerUsage. */
  async backfillOwnerUsage(batch: number): Promise<number> {
    await this.ctx.refreshRemovedGroups();
    const groups = [...this.ctx.config.groups, ...this.ctx.removedGroups.values()];
    const specs = Object.fromEntries(groups.map((g) => [g.name, ownerUsageSpec(this.ctx.config, g)]));
    let counted = 0;
    for (const names of await this.ctx.reader.allVmNameBatches(batch)) counted += await this.ctx.scripts.countOwnerUsage(specs, names);
    return counted;
  }

  /** See VmManager.backfillDueTimes. */
  async backfillDueTimes(batch: number): Promise<number> {
    let indexed = 0;
    for (const names of await this.ctx.reader.allVmNameBatches(batch)) indexed += await this.ctx.scripts.indexDueTimes(names);
    return indexed;
  }

  /** See VmManager.startVmTermination. */
  async startVmTermination(vmName: string, allowedPreState: VmState | null | undefined, reason: TerminationReason): Promise<boolean> {
    if (allowedPreState != null && !isVmState(allowedPreState)) {
      throw new InvalidVmRequest(`unknown VM state ${JSON.stringify(allowedPreState)}`);
    }
    const now = this.ctx.clock();
    if (!(await this.ctx.scripts.startVmTermination(vmName, allowedPreState ?? '', now, reason))) return false;
    await this.jobs.enqueueTermination(vmName, now, reason);
    return true;
  }

  async removeVmFromPool(vmName: string): Promise<void> {
    await this.ctx.scripts.removeVm(vmName);
    this.ctx.logger.info({ vmName }, 'VM removed from pool');
  }
}
