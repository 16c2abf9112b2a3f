/**
 * Demand: the acquire requests a group should spawn for. Two places hold them:
 * - the line: requests an acquire worker picked up and that wait for a VM (the demand sets,
 *   VmManager.countDemand);
 * - sets waiting for several VMs at once (acquire-set jobs in the line, and VmManager.acquireVmSet
 *   retrying outside it): each item in its first group's demand set (members 'set|<job id>|<item>'),
 *   and a queued acquire-set job each item likewise (queuedSetDemand); limited by the owner's room
 *   as single requests are (a set retried outside the line by VmManager.acquireVmSet has no owner
 *   on record and is not);
 * - the vm-acquire queue: requests no acquire worker has taken yet (all workers busy, or more
 *   requests than concurrency × replicas). Only the first QUEUED_DEMAND_SCAN jobs of each of the
 *   states 'waiting' and 'prioritized' are read, so that a huge backlog costs one
 *   bounded read per cycle; beyond that, demand is under-counted until the queue drains.
 * A request counts once (a stalled request can be in the line and back in the queue) and only for
 * its first group (its groups as given, or the groups listing its arch, in config order), so that a
 * request that could use several groups does not make every one of them spawn a VM for it.
 * An owner's requests count in a group only up to what max_vm_per_user still lets it use there
 * (its room: the limit less the VMs bound to it, and no more than its limits across groups still
 * hold), so that one owner's flood of requests spawns no VM it could never take. Reading the rooms
 * costs one HMGET per group over the waiting owners, and with limits across groups one read of
 * each waiting owner's usage.
 */
import type { Job, Queue } from 'bullmq';
import { requestGroupIds } from '../acquire/requestGroups.js';
import type { AcquireWaiter } from '../pool/types.js';
import { setDemandMember, setJobIdOfDemandMember } from '../pool/acquireLine.js';
import type { VmManager } from '../pool/vmManager.js';
import { ownerRoomAcross, ownerUsageSpec, ownerVmLimit, type Resources } from './quota.js';
import { acquireRequestSchema, acquireSetRequestSchema, DEFAULT_ACQUIRE_TIMEOUT_MS, isAcquireSetPayload, isStrictRequest } from '../../queues/acquire.js';

/** Queued vm-acquire jobs read per state and cycle (the first ones, oldest first). */
export const QUEUED_DEMAND_SCAN = 1000;

/** Waiting requests read per group's line and cycle. */
export const LINE_DEMAND_SCAN = 1000;

/**
 * A waiting acquire request as demand: its job id (as in the line), the groups it could use in its
 * order of preference, and whether it keeps to them (strictGroup: no fallback groups).
 */
export type DemandRequest = Pick<AcquireWaiter, 'jobId'> & { groups: readonly string[]; strict?: boolean; owner?: string };

/**
 * How many more VMs an owner may use in a group (max_vm_per_user less the VMs bound to it there);
 * its requests beyond that are no demand. A request without an owner is not limited.
 */
export type OwnerRoom = (group: string, owner: string) => number;

/**
 * Which groups a request's demand counts for (default: its first). With fallback groups, a request
 * whose first group is blocked counts there (so that its breaker's probe has a reason to spawn)
 * and in the fallback that serves it.
 */
export type DemandRoute = (request: DemandRequest) => readonly string[];

/**
 * Demand per group (one entry per name of `groupNames`, in its order): each request counts once,
 * for its first group, and an owner's requests count in a group only up to its room there.
 * Requests are taken in order; a later one with the same job id is the same request. A group not
 * in `groupNames` (removed from the config) has no demand: it spawns nothing.
 */
export function demandByGroup(
  requests: readonly DemandRequest[],
  groupNames: readonly string[],
  route: DemandRoute = (r) => r.groups.slice(0, 1),
  room?: OwnerRoom,
): number[] {
  const demand = new Array<number>(groupNames.length).fill(0);
  const position = new Map(groupNames.map((name, i) => [name, i]));
  const seen = new Set<string>();
  // Requests counted per group and owner (room given).
  const counted = new Map<string, number>();
  for (const r of requests) {
    if (seen.has(r.jobId)) continue;
    seen.add(r.jobId);
    for (const g of new Set(route(r))) {
      const at = position.get(g);
      if (at === undefined) continue;
      if (room && r.owner !== undefined) {
        const key = `${g}\n${r.owner}`;
        const n = counted.get(key) ?? 0;
        if (n >= room(g, r.owner)) continue;
        counted.set(key, n + 1);
      }
      demand[at]! += 1;
    }
  }
  return demand;
}

/**
 * The rooms of the owners of `requests` in every group (max_vm_per_user less the VMs bound to the
 * owner), read for the waiting owners only.
 */
export async function readOwnerRooms(vmm: VmManager, requests: readonly DemandRequest[]): Promise<OwnerRoom> {
  const owners = [...new Set(requests.flatMap((r) => (r.owner === undefined ? [] : [r.owner])))];
  const configs = vmm.allGroupConfigs();
  const specs = new Map(configs.map((gc) => [gc.name, ownerUsageSpec(vmm.config, gc)]));
  const scopes = [...new Set([...specs.values()].flatMap((spec) => spec.s.filter((x) => x.m).map((x) => x.n)))];
  const usage = new Map<string, ReadonlyMap<string, Resources>>(
    scopes.length === 0 ? [] : await Promise.all(owners.map(async (o) => [o, await vmm.reader.ownerUsage(o, scopes)] as const)),
  );
  const rooms = new Map(
    await Promise.all(
      configs.map(async (gc) => {
        const bound = await vmm.reader.ownerVmCounts(gc.name, owners);
        const spec = specs.get(gc.name)!;
        const room = (o: string, i: number) => Math.max(0, Math.min(ownerVmLimit(gc) - bound[i]!, ownerRoomAcross(spec, usage.get(o) ?? new Map())));
        return [gc.name, new Map(owners.map((o, i) => [o, room(o, i)]))] as const;
      }),
    ),
  );
  return (g, owner) => rooms.get(g)?.get(owner) ?? 0;
}

/**
 * The demand of one queued vm-acquire job, or null when it does not count: an invalid payload or
 * an unknown group or arch (the processor fails it at once), or a deadline (enqueued + timeoutMs)
 * already reached (the processor fails it with NoVmAvailable as soon as it takes it).
 */
export function queuedDemandRequest(
  job: { id?: string | undefined; data: unknown; timestamp: number },
  groups: readonly { name: string; archs: readonly string[]; tags?: readonly string[] }[],
  now: number,
  removed: ReadonlySet<string> = new Set(),
): DemandRequest | null {
  if (job.id === undefined) return null;
  const parsed = acquireRequestSchema.safeParse(job.data);
  if (!parsed.success) return null;
  if (job.timestamp + (parsed.data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS) <= now) return null;
  try {
    const strict = isStrictRequest(parsed.data);
    return { jobId: job.id, owner: parsed.data.owner, groups: requestGroupIds(groups, parsed.data, removed), ...(strict ? { strict } : {}) };
  } catch {
    return null;
  }
}

/**
 * The demand of a queued acquire-set job: one request per item, for the item's first group, with
 * the member the line gives it (set|<job id>|<item>) so that it counts once when the set is both
 * queued and in the line; none for an invalid payload, an unknown group or a passed deadline.
 */
export function queuedSetDemand(
  job: { id?: string | undefined; data: unknown; timestamp: number },
  groups: readonly { name: string; archs: readonly string[]; tags?: readonly string[] }[],
  now: number,
  removed: ReadonlySet<string> = new Set(),
): DemandRequest[] {
  if (job.id === undefined) return [];
  const parsed = acquireSetRequestSchema.safeParse(job.data);
  if (!parsed.success) return [];
  if (job.timestamp + (parsed.data.timeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS) <= now) return [];
  const strict = isStrictRequest(parsed.data);
  try {
    return parsed.data.vms.map((item, i) => ({
      jobId: setDemandMember(job.id!, i + 1),
      owner: parsed.data.owner,
      groups: requestGroupIds(groups, item, removed),
      ...(strict ? { strict } : {}),
    }));
  } catch {
    return [];
  }
}

/**
 * Reads the demand of every configured group (one entry per group, in config order), then of each
 * group removed from the config that drains (vmm.removedGroups): requests in the line, then queued
 * vm-acquire jobs, counted as demandByGroup says.
 */
export async function readDemand(vmm: VmManager, acquireQueue: Queue, route?: DemandRoute): Promise<number[]> {
  const now = vmm.clock();
  const groups = vmm.config.groups;
  const removed = new Set(vmm.removedGroups.keys());
  const names = [...vmm.vmGroups, ...removed];
  const [lines, queued] = await Promise.all([
    Promise.all(names.map((g) => vmm.reader.lineRequests(g, now, LINE_DEMAND_SCAN))),
    acquireQueue.getJobs(['waiting', 'prioritized'], 0, QUEUED_DEMAND_SCAN - 1, true) as Promise<Job[]>,
  ]);
  // The groups each request in the line waits in, in config order.
  const inLine = new Map<string, { owner: string; waitsIn: string[] }>();
  // The owners of sets in the line, by job id: their items count against the owner's room.
  const setOwners = new Map<string, string>();
  lines.forEach((waiting, i) => {
    for (const { jobId, owner, set } of waiting) {
      if (set) {
        setOwners.set(jobId, owner);
        continue;
      }
      const entry = inLine.get(jobId) ?? { owner, waitsIn: [] };
      entry.waitsIn.push(names[i]!);
      inLine.set(jobId, entry);
    }
  });
  const requests: DemandRequest[] = [];
  for (const [jobId, { owner, waitsIn }] of inLine) {
    // A request waiting in several groups counts for its own first one: read its order from the job.
    // With a route (fallback groups), the job also says which groups it asked for and whether it is strict.
    let request: DemandRequest = { jobId, owner, groups: waitsIn };
    if (waitsIn.length > 1 || route) {
      const job = await acquireQueue.getJob(jobId).catch(() => undefined);
      const own = job ? queuedDemandRequest({ id: jobId, data: job.data, timestamp: job.timestamp }, groups, -Infinity, removed) : null;
      if (own && route) request = own;
      else if (own) request = { jobId, owner, groups: own.groups.filter((g) => waitsIn.includes(g)) };
      if (request.groups.length === 0) request = { jobId, owner, groups: waitsIn };
    }
    requests.push(request);
  }
  for (const job of queued) {
    if (job && isAcquireSetPayload(job.data)) {
      requests.push(...queuedSetDemand(job, groups, now, removed));
      continue;
    }
    const r = job ? queuedDemandRequest(job, groups, now, removed) : null;
    if (r) requests.push(r);
  }
  // Items of sets that wait (in the line, or VmManager.acquireVmSet retrying outside it): each is
  // demand of its first group. With a route (fallback groups), the set's job says each item's
  // groups and whether it is strict (one read per set); a set with no job keeps to its first group.
  const sets = await Promise.all(names.map((g) => vmm.reader.setDemand(g, now, LINE_DEMAND_SCAN)));
  const setItems = new Map<string, DemandRequest[]>();
  for (const [i, members] of sets.entries()) {
    for (const member of members) {
      const setJobId = setJobIdOfDemandMember(member);
      const owner = setJobId === null ? undefined : setOwners.get(setJobId);
      let request: DemandRequest = { jobId: member, groups: [names[i]!], strict: true, ...(owner === undefined ? {} : { owner }) };
      if (route && setJobId !== null) {
        let items = setItems.get(setJobId);
        if (!items) {
          const job = await acquireQueue.getJob(setJobId).catch(() => undefined);
          items = job ? queuedSetDemand({ id: setJobId, data: job.data, timestamp: job.timestamp }, groups, -Infinity, removed) : [];
          setItems.set(setJobId, items);
        }
        request = items.find((r) => r.jobId === member) ?? request;
      }
      requests.push(request);
    }
  }
  return demandByGroup(requests, names, route, await readOwnerRooms(vmm, requests));
}
