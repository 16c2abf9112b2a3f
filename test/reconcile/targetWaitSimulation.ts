import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { GroupConfig } from '../../src/config/index.js';
import { VmStates, type VmRecord } from '../../src/pool/types.js';
import { decideRetireSurplus, decideStartSpawnIfRequired, type PoolSnapshot } from '../../src/reconcile/decisions.js';
import { arrivalRateFromBuckets, nextBootEma } from '../../src/reconcile/targetWait.js';

/**
 * A replay of a day of acquire requests against the real reconcile decisions (spawn and retire
 * surplus), in virtual time. Every VM is disposable: it serves one build and is then terminated.
 * A spawn is requested at a reconcile cycle and its VM is ready `bootSeconds` (plus jitter) later.
 */
export interface Arrival {
  at: number;
  buildSeconds: number;
}

export function loadArrivals(): Arrival[] {
  const text = readFileSync(fileURLToPath(new URL('../fixtures/arrivals-day.csv', import.meta.url)), 'utf8');
  return text
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const [at, build] = l.split(',').map(Number);
      return { at: at!, buildSeconds: build! };
    });
}

export interface SimulationResult {
  waits: number[];
  p95: number;
  vmMinutes: number;
  /** VM-minutes not serving a build: booting or ready and idle. */
  idleVmMinutes: number;
  spawns: number;
  retired: number;
  maxReady: number;
}

export interface SimulationOptions {
  group: GroupConfig;
  arrivals: readonly Arrival[];
  cycleSeconds: number;
  bootSeconds: number;
  /** Spread of the boot time: each boot takes bootSeconds ± jitter (deterministic). */
  bootJitterSeconds: number;
}

interface SimVm {
  name: string;
  state: 'ready' | 'in_use';
  since: number;
  freeAt: number;
}

function record(vm: SimVm, group: string): VmRecord {
  return {
    vmName: vm.name,
    vmIp: '10.0.0.1',
    group,
    state: vm.state === 'ready' ? VmStates.READY : VmStates.IN_USE,
    owner: vm.state === 'in_use' ? 'builder' : null,
    boundToUser: vm.state === 'in_use' ? 'builder' : null,
    sandbox: vm.state === 'in_use' ? 'sb' : null,
    usedByWorker: null,
    taskId: null,
    buildId: null,
    chroot: null,
    inUseSince: vm.state === 'in_use' ? vm.since * 1000 : null,
    lastHealthCheck: vm.since * 1000,
    checkFails: 0,
    lastRelease: null,
    buildsCount: 0,
    terminatingSince: null,
    addedAt: vm.since * 1000,
    boundSince: null,
    leaseId: null,
    leaseExpiresAt: null,
    heldBy: null,
    heldSince: null,
    heldUntil: null,
    holdReason: null,
  };
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!;
}

export function simulate(o: SimulationOptions): SimulationResult {
  const config = { groups: [o.group], vm_cycle_timeout: o.cycleSeconds };
  const vms = new Map<string, SimVm>();
  const spawns: { id: string; startedAt: number; readyAt: number }[] = [];
  const waiting: Arrival[] = [];
  const waits: number[] = [];
  const buckets = new Map<number, number>();
  const windowMs = (o.group.target_wait?.window ?? 900) * 1000;
  let bootEma: number | null = null;
  let next = 0;
  let seq = 0;
  let vmSeconds = 0;
  let idleSeconds = 0;
  let spawned = 0;
  let retired = 0;
  let maxReady = 0;
  const end = Math.ceil(Math.max(...o.arrivals.map((a) => a.at + a.buildSeconds))) + 600;

  const serve = (vm: SimVm, a: Arrival, t: number) => {
    vm.state = 'in_use';
    vm.since = t;
    vm.freeAt = t + a.buildSeconds;
    waits.push(t - a.at);
  };
  const readyVm = () => [...vms.values()].find((v) => v.state === 'ready');

  for (let t = 0; t <= end; t++) {
    const now = t * 1000;
    // Builds that ended: the VM is dirty and is terminated.
    for (const [name, vm] of vms) if (vm.state === 'in_use' && vm.freeAt <= t) vms.delete(name);
    // Spawns that finished: the VM is ready (checked), and serves the oldest waiting request.
    for (let i = spawns.length - 1; i >= 0; i--) {
      const s = spawns[i]!;
      if (s.readyAt > t) continue;
      spawns.splice(i, 1);
      bootEma = nextBootEma(bootEma, (s.readyAt - s.startedAt) * 1000);
      const vm: SimVm = { name: s.id, state: 'ready', since: t, freeAt: 0 };
      vms.set(vm.name, vm);
      const a = waiting.shift();
      if (a) serve(vm, a, t);
    }
    // Requests that arrive now take a ready VM, or wait in line.
    while (next < o.arrivals.length && o.arrivals[next]!.at <= t) {
      const a = o.arrivals[next++]!;
      const minute = Math.floor((a.at * 1000) / 60_000);
      buckets.set(minute, (buckets.get(minute) ?? 0) + 1);
      const vm = readyVm();
      if (vm) serve(vm, a, t);
      else waiting.push(a);
    }
    if (t % o.cycleSeconds === 0) {
      const snapshot: PoolSnapshot = {
        vms: [...vms.values()].map((vm) => record(vm, o.group.name)),
        groups: [
          {
            group: o.group.name,
            spawnsInFlight: spawns.map((s) => ({ spawnId: s.id, startedAt: s.startedAt * 1000 })),
            demand: waiting.length,
            lastSpawnStart: null,
            targetWait: { arrivalRate: arrivalRateFromBuckets(buckets, now, windowMs), bootMs: bootEma },
          },
        ],
        serverStart: 0,
      };
      for (const action of decideRetireSurplus(snapshot, config, now)) {
        if (action.type === 'terminate' && vms.get(action.vmName)?.state === 'ready') {
          vms.delete(action.vmName);
          retired++;
        }
      }
      for (const action of decideStartSpawnIfRequired(snapshot, config, now)) {
        if (action.type !== 'spawn') continue;
        const id = `vm-${++seq}`;
        // A deterministic spread: the boot time cycles through [boot - jitter, boot + jitter].
        const boot = o.bootSeconds + (((seq * 37) % 21) / 10 - 1) * o.bootJitterSeconds;
        spawns.push({ id, startedAt: t, readyAt: t + Math.round(boot) });
        spawned++;
      }
    }
    const ready = [...vms.values()].filter((v) => v.state === 'ready').length;
    maxReady = Math.max(maxReady, ready);
    vmSeconds += vms.size + spawns.length;
    idleSeconds += ready + spawns.length;
  }
  return { waits, p95: percentile(waits, 0.95), vmMinutes: vmSeconds / 60, idleVmMinutes: idleSeconds / 60, spawns: spawned, retired, maxReady };
}
