import { Queue } from 'bullmq';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostAllowed, hostHeaderName } from '../../../src/http/auth.js';
import { addressPolicy } from '../../../src/providers/addressPolicy.js';
import { ProviderError, parseListOutput, parseSpawnOutput } from '../../../src/providers/command.js';
import { isValidVmIp, isValidVmName } from '../../../src/pool/types.js';
import { acquireRequestSchema } from '../../../queues/acquire.js';
import { rawRequest } from '../../helpers/http.js';
import { ADMIN_TOKEN, BUILDER_TOKEN, createWebKit, webTestConfig, type WebKit } from '../../http/fixtures.js';

// Property tests (fast-check, 1,000 cases each): every malformed input gets a clear error, never a
// 5xx, and changes nothing.
const RUNS = 1_000;

/** Header values Node's client will send: visible ASCII and spaces. */
const headerValue = fc.stringMatching(/^[\x21-\x7e][\x20-\x7e]{0,60}$/);

describe('API bodies and headers', () => {
  let kit: WebKit;
  let host: string;
  let acquireQueue: Queue;

  beforeAll(async () => {
    kit = await createWebKit('sec-props', webTestConfig({ web: { auth: { token: ADMIN_TOKEN, tokens: [{ token: BUILDER_TOKEN, scopes: ['builder'], owners: ['copr-*'] }] } } }));
    host = `127.0.0.1:${new URL(kit.url).port}`;
    await kit.addReady('p1', '10.9.3.1', 0);
    acquireQueue = new Queue('vm-acquire', { connection: kit.redis, prefix: kit.prefix });
  });
  afterAll(async () => {
    await acquireQueue?.close();
    await kit?.close();
  });

  const unchanged = async () => {
    const vm = await kit.vmm.getVmRecord('p1');
    expect(vm.state).toBe('ready');
    expect(vm.heldBy).toBeNull();
    expect(vm.owner).toBeNull();
    expect(await acquireQueue.getJobs(['waiting', 'active', 'completed', 'failed', 'prioritized', 'delayed'])).toEqual([]);
  };

  it('answers every malformed acquire body with a 4xx that says what is wrong', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.anything(), fc.record({ owner: fc.anything(), sandbox: fc.anything(), groups: fc.anything() }, { requiredKeys: [] })), async (body) => {
        fc.pre(!acquireRequestSchema.safeParse(body).success);
        const text = JSON.stringify(body) ?? 'null';
        const res = await rawRequest(kit.url, { method: 'POST', path: '/api/v1/acquire', host, headers: { authorization: `Bearer ${BUILDER_TOKEN}`, 'content-type': 'application/json' }, body: text });
        expect([400, 413], `${res.status} ${res.body}`).toContain(res.status);
        const parsed = JSON.parse(res.body) as { error: string; message: string };
        expect(parsed.error).toMatch(/validation_error|payload_too_large/);
        expect(parsed.message.length).toBeGreaterThan(10);
      }),
      { numRuns: RUNS },
    );
    await unchanged();
  });

  it('refuses any Host, Origin or Authorization that is not ours, and never fails inside', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({ host: fc.oneof(headerValue, fc.constant(host)), origin: fc.option(headerValue), authorization: fc.option(fc.oneof(headerValue, fc.constant(`Bearer ${ADMIN_TOKEN}`))) }),
        async (h) => {
          const headers: Record<string, string> = { 'content-type': 'application/json' };
          if (h.origin !== null) headers.origin = h.origin;
          if (h.authorization !== null) headers.authorization = h.authorization;
          const res = await rawRequest(kit.url, { method: 'POST', path: '/api/v1/vms/p1/hold', host: h.host, headers, body: '{}' });
          expect(res.status, res.body).toBeLessThan(500);
          const name = hostHeaderName(h.host);
          const hostOk = name !== null && hostAllowed(kit.config.web, name);
          if (!hostOk) expect(res.status).toBe(421);
          else if (h.authorization !== `Bearer ${ADMIN_TOKEN}`) expect([401, 403]).toContain(res.status);
          if (res.status === 200) {
            // Only our own host with the admin token holds; undo it for the next case.
            expect(hostOk && h.authorization === `Bearer ${ADMIN_TOKEN}`).toBe(true);
            await kit.vmm.unholdVm('p1');
          }
        },
      ),
      { numRuns: RUNS },
    );
    await unchanged();
  });
});

describe('hook output', () => {
  const line = fc.oneof(
    fc.string({ maxLength: 120 }),
    fc.record({ ip: fc.oneof(fc.ipV4(), fc.ipV6(), fc.string()), name: fc.oneof(fc.stringMatching(/^[A-Za-z0-9._-]{1,70}$/), fc.string()) }).map((o) => JSON.stringify(o)),
    fc.tuple(fc.oneof(fc.ipV4(), fc.string({ maxLength: 20 })), fc.string({ maxLength: 70 })).map(([ip, name]) => `IP=${ip} vm_name=${name}`),
  );

  it('spawn output is a valid machine or a ProviderError, never anything else', () => {
    fc.assert(
      fc.property(fc.array(line, { maxLength: 4 }), (lines) => {
        let machine;
        try {
          machine = parseSpawnOutput(lines.join('\n'));
        } catch (err) {
          expect(err).toBeInstanceOf(ProviderError);
          expect((err as Error).message).toMatch(/spawn_cmd/);
          return;
        }
        expect(isValidVmName(machine.name)).toBe(true);
        expect(isValidVmIp(machine.ip)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });

  it('list output is a list of valid machines or a ProviderError', () => {
    fc.assert(
      fc.property(fc.array(line, { maxLength: 6 }), (lines) => {
        try {
          for (const m of parseListOutput(lines.join('\n'))) expect(isValidVmName(m.name), m.name).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(ProviderError);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('the address policy answers every string without throwing, and never lets an unusable address through', () => {
    const policy = addressPolicy({ allowLoopback: false });
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6(), fc.string({ maxLength: 60 })), (ip) => {
        const refusal = policy.refusal(ip);
        if (refusal === null) {
          expect(isValidVmIp(ip)).toBe(true);
          expect(ip).not.toMatch(/^(0\.0\.0\.0|255\.255\.255\.255|127\.|169\.254\.|22[4-9]\.|23\d\.)/);
          expect(ip).not.toContain('%');
        }
      }),
      { numRuns: RUNS },
    );
  });
});
