import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, QueueEvents } from 'bullmq';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireRequestSchema } from '../../../queues/acquire.js';
import { QueueNames } from '../../../queues/names.js';
import { requestGroupIds } from '../../../src/acquire/requestGroups.js';
import { ConfigError, loadConfig, parseConfig } from '../../../src/config/index.js';
import { createLogger } from '../../../src/logger.js';
import { ProviderError, CommandProvider } from '../../../src/providers/command.js';
import { isValidVmIp, isValidVmName } from '../../../src/pool/types.js';
import { poolKeys } from '../../../src/pool/keys.js';
import { CHAOS_SCALE, reportFigures, startSystem, type ChaosSystem } from './harness.js';

// Chaos scenario 6: bad input, property-based (fast-check, at least 1,000 cases each). Acquire
// payloads added straight to the vm-acquire queue of a real acquire worker process: each job fails
// with a clear reason and changes nothing in the pool. Config files: a config or a ConfigError,
// never a crash. Hook output of a real spawn hook process through the command provider: a valid
// machine or a ProviderError (test/scenarios/security/properties.test.ts covers the parsers on their own).
const RUNS = 1_000 * CHAOS_SCALE;
const groups = [
  { name: 'x86', archs: ['x86_64'], tags: ['kvm'], max_vm_per_user: 2 },
  { name: 'arm', archs: ['aarch64'], max_vm_per_user: 2 },
];
const config = { vm_cycle_timeout: 60, groups };

/** Whether the acquire processor would take the payload (schema and groups): such cases are skipped. */
function acceptable(payload: unknown): boolean {
  const parsed = acquireRequestSchema.safeParse(payload);
  if (!parsed.success) return false;
  try {
    requestGroupIds(parseConfig(config, {}).groups, parsed.data);
    return true;
  } catch {
    return false;
  }
}

const valid = { owner: 'alice', sandbox: 'alice/p', groups: [0], taskId: 't1', timeoutMs: 1_000 };
const wrongValue = fc.oneof(fc.constant(null), fc.integer(), fc.double(), fc.boolean(), fc.string({ maxLength: 300 }), fc.array(fc.anything(), { maxLength: 3 }), fc.object({ maxDepth: 1 }));
/** Payloads that break one rule of a valid one, or are not even objects. */
const badPayload = fc.oneof(
  fc.anything(),
  fc.tuple(fc.constantFrom('owner', 'sandbox', 'groups', 'arch', 'tags', 'taskId', 'buildId', 'chroot', 'timeoutMs'), wrongValue).map(([k, v]) => ({ ...valid, [k]: v })),
  fc.string({ minLength: 1, maxLength: 20 }).filter((k) => !(k in valid)).map((k) => ({ ...valid, [k]: 1 })),
  fc.constantFrom<Record<string, unknown>>(
    { ...valid, owner: undefined },
    { ...valid, groups: [7] },
    { ...valid, groups: [] },
    { ...valid, groups: [-1] },
    { ...valid, groups: undefined, arch: 'riscv64' },
    { ...valid, arch: 'x86_64' },
    { ...valid, groups: [1], tags: ['kvm'] },
    { ...valid, tags: ['gpu'] },
    { ...valid, owner: 'o'.repeat(256) },
    { ...valid, owner: '' },
    { ...valid, timeoutMs: 0 },
    { ...valid, timeoutMs: 24 * 3600 * 1000 + 1 },
    { ...valid, timeoutMs: 1.5 },
  ),
);

describe('chaos 6: bad input (fast-check)', () => {
  let sys: ChaosSystem;
  let queue: Queue;
  let events: QueueEvents;
  let eventsConn: Redis;

  beforeAll(async () => {
    sys = await startSystem('badinput', config, ['acquire']);
    queue = new Queue(QueueNames.ACQUIRE, { connection: sys.conn, prefix: sys.prefix });
    eventsConn = new Redis(sys.redis.url, { maxRetriesPerRequest: null });
    eventsConn.on('error', () => undefined);
    events = new QueueEvents(QueueNames.ACQUIRE, { connection: eventsConn, prefix: sys.prefix });
    await events.waitUntilReady();
    await sys.vmm.markServerStart();
    for (const [name, group] of [['x1', 0], ['a1', 1]] as const) {
      await sys.vmm.addVmToPool(`10.7.0.${group + 1}`, name, group);
      await sys.vmm.startVmCheck(name);
      await sys.vmm.recordHealthCheckResult(name, true);
    }
  }, 120_000);

  afterAll(async () => {
    await events?.close();
    eventsConn?.disconnect();
    await queue?.close();
    await sys?.close();
  }, 60_000);

  /**
   * Every pool key with its value (not the job metrics kept beside them, nor the pool state marker,
   * whose epoch every process's heartbeat bumps): what no bad payload may change.
   */
  async function poolState(): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    const [, keys] = await sys.conn.scan('0', 'MATCH', `${poolKeys(sys.prefix).base}*`, 'COUNT', 10_000);
    for (const key of keys.filter((k) => !k.includes(':metrics:') && !k.endsWith(':pool_state')).sort()) {
      const type = await sys.conn.type(key);
      out[key] =
        type === 'hash' ? await sys.conn.hgetall(key) : type === 'set' ? (await sys.conn.smembers(key)).sort() : type === 'zset' ? await sys.conn.zrange(key, 0, '-1', 'WITHSCORES') : type === 'stream' ? await sys.conn.xlen(key) : await sys.conn.get(key);
    }
    return out;
  }

  it('acquire payloads added straight to the queue: each job fails with a clear reason and changes nothing', { timeout: 600_000 }, async () => {
    const before = await poolState();
    let n = 0;
    const started = Date.now();
    await fc.assert(
      fc.asyncProperty(badPayload, async (payload) => {
        fc.pre(!acceptable(payload));
        n += 1;
        const job = await queue.add('acquire', payload as object, { jobId: `bad-${n}`, attempts: 1, removeOnComplete: false, removeOnFail: false });
        const outcome = await job.waitUntilFinished(events, 30_000).then(
          (value: unknown) => ({ ok: true as const, value }),
          (err: Error) => ({ ok: false as const, reason: err.message }),
        );
        expect(outcome.ok, JSON.stringify(payload)).toBe(false);
        if (!outcome.ok) expect(outcome.reason).toMatch(/^(invalid vm-acquire payload: .+|unknown (group|arch|tag).+|no (such )?group lists every tag.+)$/s);
      }),
      { numRuns: RUNS },
    );
    const after = await poolState();
    expect(Object.keys(after).filter((k) => !(k in before))).toEqual([]);
    expect(after).toEqual(before);
    reportFigures({ scenario: '6a bad acquire payloads', tried: n, lost: 0, doubled: 0, recoverMs: null, notes: `every job failed with its reason, the pool unchanged; ${((Date.now() - started) / 1000).toFixed(0)} s` });
  });

  it('config files: a config or a ConfigError naming the field, never a crash', { timeout: 300_000 }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-chaos-config-'));
    const file = join(dir, 'vmpool.yaml');
    const scalar = fc.oneof(fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.string({ maxLength: 30 }), fc.constantFrom('10', '-1', 'x86_64', 'command', 'local', '0.0.0.0/0', '*/5 * * * *'));
    const value = fc.oneof(scalar, fc.array(scalar, { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 12 }), scalar, { maxKeys: 3 }));
    const path = fc.constantFrom(
      ['redis', 'url'],
      ['redis', 'prefix'],
      ['vm_cycle_timeout'],
      ['audit', 'max_events'],
      ['audit'],
      ['web', 'port'],
      ['web', 'auth', 'tokens'],
      ['groups'],
      ['groups', 0, 'max_vm_total'],
      ['groups', 0, 'min_ready'],
      ['groups', 0, 'provider'],
      ['groups', 0, 'provider', 'spawn_cmd'],
      ['groups', 0, 'check'],
      ['groups', 0, 'allowed_networks'],
      ['groups', 0, 'lease_timeout'],
      ['concurrency', 'acquire'],
      ['jobs', 'lock_duration'],
      ['unknown_key'],
    );
    const text = fc.oneof(
      // A valid file with one value replaced.
      fc.tuple(path, value).map(([p, v]) => {
        const cfg = structuredClone({ groups: [{ name: 'g', archs: ['x86_64'], provider: { type: 'command', spawn_cmd: ['/bin/true'], terminate_cmd: ['/bin/true'] }, check: { type: 'tcp', port: 22 } }] }) as Record<string | number, unknown>;
        let at = cfg;
        for (const key of p.slice(0, -1)) at = (at[key] ??= {}) as Record<string | number, unknown>;
        at[p.at(-1)!] = v;
        return JSON.stringify(cfg);
      }),
      // Anything at all as the file's text.
      fc.string({ maxLength: 200 }),
      fc.constantFrom('groups: [', 'redis: {url: ', '- - -', ': :', '\t\tx: 1', 'a: &a [*a]', '!!binary x', 'groups: !!str 3'),
    );
    let configs = 0;
    let errors = 0;
    fc.assert(
      fc.property(text, (content) => {
        writeFileSync(file, content);
        try {
          loadConfig(file, {});
          configs += 1;
        } catch (err) {
          expect(err, content).toBeInstanceOf(ConfigError);
          expect((err as Error).message).toMatch(/config/);
          errors += 1;
        }
      }),
      { numRuns: RUNS },
    );
    rmSync(dir, { recursive: true, force: true });
    reportFigures({ scenario: '6b bad config files', tried: configs + errors, lost: 0, doubled: 0, recoverMs: null, notes: `${errors} ConfigErrors, ${configs} valid, no crash` });
  });

  it('hook output of a real spawn hook: a valid machine, or a ProviderError naming spawn_cmd', { timeout: 600_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmpool-chaos-hook-'));
    const spawnHook = join(dir, 'spawn.sh');
    const terminateHook = join(dir, 'terminate.sh');
    writeFileSync(spawnHook, '#!/bin/sh\nprintf "%s" "$HOOK_OUT"\nprintf "%s" "$HOOK_ERR" >&2\nexit "$HOOK_CODE"\n', { mode: 0o755 });
    writeFileSync(terminateHook, '#!/bin/sh\necho "$VMPOOL_VM_NAME" >> "$(dirname "$0")/terminated"\n', { mode: 0o755 });
    const logger = createLogger('chaos-hook', { LOG_LEVEL: 'silent' });
    const group = { index: 0, config: parseConfig(config, {}).groups[0]! };
    const line = fc.oneof(
      fc.string({ maxLength: 120 }),
      fc.record({ ip: fc.oneof(fc.ipV4(), fc.ipV6(), fc.string({ maxLength: 20 }), fc.integer()), name: fc.oneof(fc.stringMatching(/^[A-Za-z0-9._-]{1,70}$/), fc.string({ maxLength: 30 }), fc.constant(null)) }).map((o) => JSON.stringify(o)),
      fc.tuple(fc.ipV4(), fc.stringMatching(/^[a-z0-9-]{1,20}$/)).map(([ip, name]) => `IP=${ip} vm_name=${name}`),
      fc.constantFrom('', '{', '{"ip":"10.0.0.1"}', '{"name":"vm-1"}', 'null', '[]', '\u0001\u0002', 'x'.repeat(5000)),
    );
    // Environment values cannot hold NUL.
    const noNul = (s: string) => s.replace(/\0/g, '');
    let machines = 0;
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(line, { maxLength: 5 }), fc.string({ maxLength: 60 }), fc.constantFrom(0, 0, 0, 1, 2, 127), async (lines, stderr, code) => {
        const provider = new CommandProvider(
          { type: 'command', spawn_cmd: [spawnHook], terminate_cmd: [terminateHook], spawn_timeout: 10, terminate_timeout: 10, kill_grace: 1, env: { HOOK_OUT: noNul(lines.join('\n')), HOOK_ERR: noNul(stderr), HOOK_CODE: String(code) } } as never,
          { logger },
        );
        try {
          const m = await provider.spawn({ group, spawnId: 's1' });
          expect(code).toBe(0);
          expect(isValidVmName(m.name)).toBe(true);
          expect(isValidVmIp(m.ip)).toBe(true);
          machines += 1;
        } catch (err) {
          expect(err).toBeInstanceOf(ProviderError);
          expect((err as Error).message).toMatch(/spawn_cmd/);
          refused += 1;
        }
      }),
      { numRuns: RUNS },
    );
    rmSync(dir, { recursive: true, force: true });
    reportFigures({ scenario: '6c bad spawn hook output', tried: machines + refused, lost: 0, doubled: 0, recoverMs: null, notes: `${refused} ProviderErrors, ${machines} valid machines, no crash` });
  });
});
