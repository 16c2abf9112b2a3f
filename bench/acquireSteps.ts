/**
 * Profile of the acquire script: its Redis time broken down by step. On a private redis-server
 * with SLOWLOG recording every command (threshold 0), the acquire script runs as it is and as
 * copies with one step taken out (a function made a no-op, or some calls dropped); each copy has
 * its own SHA, so SLOWLOG tells their durations apart. A step's cost is the full script's median
 * less the copy's. The copies take turns call by call (each acquire followed by an untimed release)
 * so that load from elsewhere falls on all alike. Both kinds of call are measured: a direct acquire
 * (no waiter, VmManager.acquireVm) and one in line (with a waiter, as the acquire job calls it).
 * Dirty acquires with a task id: the common case of a busy farm.
 *   npx tsx bench/acquireSteps.ts
 * BENCH_STEPS_COMPARE=<git revision> adds that revision's acquire script (its includes resolved from
 * the same revision) to the turns: a before/after under the same load, while the keys it uses agree.
 * BENCH_JSON=1 also prints `BENCH_RESULT <json>` ({rows}; `npm run bench` reads it).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { poolKeyBase } from '../src/pool/keys.js';
import { scriptSources } from '../src/pool/scripts.js';
import { VmManager } from '../src/pool/vmManager.js';
import { discardingLogger, markdownTable, percentile } from './lib/measure.js';
import { addReadyVms } from './lib/fill.js';
import { startPrivateRedis } from './lib/redisServer.js';

const VMS = Number(process.env.BENCH_STEPS_VMS ?? 1_000);
const OWNERS = 100;
const ROUND = 100;
const ROUNDS = Number(process.env.BENCH_STEPS_ROUNDS ?? 10);
const PREFIX = 'steps';

/** A step taken out of the script: text replacements on the script with its includes resolved. */
interface Variant {
  step: string;
  patches: [string, string][];
}

const noop = (signature: string, result = ''): [string, string] => [`${signature}\n`, `${signature}\n  do return ${result} end\n`];

const VARIANTS: Variant[] = [
  // Not a step: everything after the definitions (what is left is the cost of running the script's
  // prologue, its functions and tables made anew at every call).
  { step: 'the work: returns after the definitions and arguments', patches: [['\nif waiting then\n  local cancelled', '\ndo return {NO_VM, {}} end\nif waiting then\n  local cancelled']] },
  { step: 'state marker check (poolVerified: HGET, INFO server)', patches: [noop('local function poolVerified(base)', 'true')] },
  {
    step: 'ready pick checks (the marker check and the HMGET of the candidate)',
    patches: [
      ["    local vm = redis.call('HMGET', vmKey(base, name), 'state', 'check_fails', 'check_seq')\n    if vm[1]", "    local vm = {'ready', '0', '1'}\n    if vm[1]"],
      noop('local function poolVerified(base)', 'true'),
    ],
  },
  { step: 'audit trail (recordEvent: GET max, XADD)', patches: [noop('local function recordEvent(base, event, name, extra, known)')] },
  { step: 'due-time sets (indexDueFields: ZADD check, ZREM dirty, SREM held)', patches: [noop('local function indexDueFields(base, name, f, previous)')] },
  { step: 'arrivals (countArrival: HINCRBY)', patches: [noop('local function countArrival(base, group, now)')] },
  {
    step: 'task ownership (heldVmOfTask, liveTaskClaim: one MGET each)',
    patches: [noop('local function heldVmOfTask(base, owner, taskId)', 'nil'), noop('local function liveTaskClaim(base, owner, taskId, now)', 'nil')],
  },
  {
    step: 'state sets (SREM old, SADD new)',
    patches: [
      ["    redis.call('SREM', stateKey(base, group, oldState), name)\n", ''],
      ["  redis.call('SADD', stateKey(base, group, newState), name)\n", ''],
    ],
  },
  {
    step: 'lease index and job assignment (ZADD leases, HSET+PEXPIRE)',
    patches: [
      ["  redis.call('ZADD', leasesKey(base), expiresAt, name)\n", ''],
      ["  if r.jobId ~= '' then\n    redis.call('HSET', acquireAssignmentKey", "  if false then\n    redis.call('HSET', acquireAssignmentKey"],
    ],
  },
  {
    step: 'reply (HGETALL of the VM)',
    patches: [["return {OK, redis.call('HGETALL', vmKey(base, name)), {}}", 'return {OK, {}, {}}']],
  },
  {
    step: 'line checks of a waiter (cancel GET, assignment HMGET, EXISTS, HEXISTS)',
    patches: [
      noop('local function givenToThisJob()', 'nil'),
      ["  local cancelled = redis.call('GET', acquireCancelKey(base, waiter))", '  local cancelled = false'],
      ["  if redis.call('EXISTS', sandboxLineKey(base, group, owner, sandbox)) == 0 then", '  if true then'],
      ["  if not name and redis.call('EXISTS', lineOwnersKey(base, group)) == 0", '  if not name'],
      ["    if redis.call('HEXISTS', waiterInfoKey(base), waiter) == 0 then", '    if true then'],
    ],
  },
];

function applyPatches(lua: string, patches: [string, string][], step: string): string {
  let out = lua;
  for (const [from, to] of patches) {
    if (!out.includes(from)) throw new Error(`step "${step}": the script has no ${JSON.stringify(from.slice(0, 60))} (the script changed; update the bench)`);
    out = out.split(from).join(to);
  }
  return out;
}

/** The acquire script as it was at a git revision, its includes resolved from that revision. */
function scriptAtRevision(revision: string): string {
  const show = (path: string) => execFileSync('git', ['show', `${revision}:src/pool/commands/${path}.lua`], { encoding: 'utf8' });
  const seen = new Set<string>();
  const resolve = (text: string): string =>
    text.replace(/^--- @include "([^"]+)"\s*$/gm, (_line, name: string) => {
      if (seen.has(name)) return '';
      seen.add(name);
      return resolve(show(name));
    });
  return resolve(show('acquireVm-1'));
}

const sha1 = (text: string) => createHash('sha1').update(text).digest('hex');

interface SlowEntry {
  sha: string;
  micros: number;
}

async function drainSlowlog(redis: Redis): Promise<SlowEntry[]> {
  const entries = (await redis.call('SLOWLOG', 'GET', '-1')) as [number, number, number, string[]][];
  await redis.call('SLOWLOG', 'RESET');
  return entries.filter((e) => e[3][0]?.toUpperCase() === 'EVALSHA').map((e) => ({ sha: e[3][1]!, micros: e[2] }));
}

export interface StepRow {
  mode: string;
  step: string;
  medianMicros: number;
  savedMicros: number;
}

async function main(): Promise<void> {
  const server = await startPrivateRedis(['--slowlog-log-slower-than', '0', '--slowlog-max-len', '100000']);
  const redis = new Redis(server.url, { maxRetriesPerRequest: 2 });
  const logger = discardingLogger();
  const vmm = new VmManager({ groups: [{ name: 'bench', max_vm_total: 100_000, max_vm_per_user: 100_000 }] }, { redis, prefix: PREFIX, logger });
  const rows: StepRow[] = [];
  try {
    await vmm.markServerStart();
    // The pool's state marker, verified on this Redis run, as a worker process leaves it.
    const check = await vmm.checkPoolState({ generation: '', epoch: 0 });
    if (check.status !== 'created') throw new Error(`expected a new state marker, got ${check.status}`);
    await vmm.verifyPoolState(check);
    await addReadyVms(vmm, { count: VMS, group: 0, ipOf: (i) => `10.0.${i >> 8}.${i & 255}`, batch: 250 });
    for (let o = 0; o < OWNERS; o++) {
      const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/p`, workerId: 'w' });
      await vmm.releaseVm(vm.vmName);
    }
    const full = scriptSources().find((s) => s.name === 'acquireVm')!.lua;
    const scripts = [{ step: 'whole script', lua: full }, ...VARIANTS.map((v) => ({ step: v.step, lua: applyPatches(full, v.patches, v.step) }))];
    const compare = process.env.BENCH_STEPS_COMPARE;
    if (compare) scripts.push({ step: `the whole script at ${compare}`, lua: scriptAtRevision(compare) });
    const noopSha = String(await redis.script('LOAD', 'return 1'));
    for (const s of scripts) await redis.script('LOAD', s.lua);
    const base = poolKeyBase(PREFIX);
    const group = vmm.config.groups[0]!;
    const leaseMs = Math.round(group.lease_timeout * 1000);

    let n = 0;
    const acquireWith = async (lua: string, waiting: boolean) => {
      const o = n % OWNERS;
      const jobId = `job-${n}`;
      const now = Date.now();
      const args: (string | number)[] = [now, `user-${o}`, `user-${o}/p`, 'w', `task-${n}`, '', '', randomUUID()];
      args.push(waiting ? `${String(now).padStart(15, '0')}|${jobId}` : '', 0, waiting ? now + 60_000 : 0, waiting ? jobId : '', 1, group.name, 100_000, leaseMs, group.max_waiting_per_owner);
      n++;
      const reply = (await redis.evalsha(sha1(lua), 1, base, ...args)) as [number, string[]];
      const fields = reply[1];
      // The copy without the reply returns no fields: the VM is found by its lease.
      const name = fields.length ? fields[fields.indexOf('vm_name') + 1] : (await redis.zrange(`${base}leases`, '-1', '-1'))[0];
      if (name) await vmm.releaseVm(name);
    };

    for (const waiting of [false, true]) {
      const mode = waiting ? 'in line (acquire job, waiter)' : 'direct (no waiter)';
      const samples = new Map<string, number[]>([[noopSha, []], ...scripts.map((s) => [sha1(s.lua), []] as [string, number[]])]);
      // Call by call in turn, so that load from elsewhere falls on every copy alike.
      await drainSlowlog(redis);
      for (let i = 0; i < ROUNDS * ROUND; i++) {
        // In a rotating order: the first call after the drain and the release runs on colder caches.
        for (let k = 0; k < scripts.length; k++) await acquireWith(scripts[(i + k) % scripts.length]!.lua, waiting);
        await redis.evalsha(noopSha, 0);
        if (i % 100 === 99) for (const e of await drainSlowlog(redis)) samples.get(e.sha)?.push(e.micros);
      }
      for (const e of await drainSlowlog(redis)) samples.get(e.sha)?.push(e.micros);
      const median = (sha: string) => percentile([...samples.get(sha)!].sort((a, b) => a - b), 50);
      const whole = median(sha1(full));
      rows.push({ mode, step: 'no-op script (return 1)', medianMicros: median(noopSha), savedMicros: NaN });
      for (const s of scripts) {
        const m = median(sha1(s.lua));
        const variant = s.step !== 'whole script' && !s.step.startsWith('the whole script at ');
        rows.push({ mode, step: variant ? `without ${s.step}` : s.step, medianMicros: m, savedMicros: variant ? whole - m : NaN });
      }
    }
    // Client side: the same direct acquire timed around the EVALSHA and around VmManager.acquireVm.
    const client = { noop: [] as number[], evalsha: [] as number[], manager: [] as number[] };
    for (let i = 0; i < ROUNDS * ROUND; i++) {
      const o = i % OWNERS;
      let t0 = process.hrtime.bigint();
      await redis.evalsha(noopSha, 0);
      client.noop.push(Number(process.hrtime.bigint() - t0) / 1e6);
      t0 = process.hrtime.bigint();
      const now = Date.now();
      const reply = (await redis.evalsha(sha1(full), 1, base, now, `user-${o}`, `user-${o}/p`, 'w', `c-${i}`, '', '', randomUUID(), '', 0, 0, '', 1, group.name, 100_000, leaseMs, group.max_waiting_per_owner)) as [number, string[]];
      client.evalsha.push(Number(process.hrtime.bigint() - t0) / 1e6);
      await vmm.releaseVm(reply[1][reply[1].indexOf('vm_name') + 1]!);
      t0 = process.hrtime.bigint();
      const vm = await vmm.acquireVm({ groups: [0], owner: `user-${o}`, sandbox: `user-${o}/p`, workerId: 'w', taskId: `d-${i}` });
      client.manager.push(Number(process.hrtime.bigint() - t0) / 1e6);
      await vmm.releaseVm(vm.vmName);
    }
    const p50 = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);
    const line = (label: string, micros: number) => rows.push({ mode: 'client round trip', step: label, medianMicros: micros, savedMicros: NaN });
    line('EVALSHA of the no-op script', p50(client.noop) * 1000);
    line('EVALSHA of the acquire script, as sent by ioredis', p50(client.evalsha) * 1000);
    line('VmManager.acquireVm (checks, lease id, reply parsing, log line)', p50(client.manager) * 1000);
  } finally {
    await vmm.close();
    await redis.quit();
    await server.stop();
  }

  console.log(`acquireVm's Redis time by step: SLOWLOG durations (µs, median of ${ROUNDS * ROUND} calls each), ${VMS} ready VMs, ${OWNERS} owners, dirty acquires with a task id`);
  console.log(markdownTable(['mode', 'script', 'median µs', 'step costs µs'], rows.map((r) => [r.mode, r.step, r.medianMicros.toFixed(1), Number.isNaN(r.savedMicros) ? '' : r.savedMicros.toFixed(1)])));
  if (process.env.BENCH_JSON === '1') console.log(`BENCH_RESULT ${JSON.stringify({ rows })}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
