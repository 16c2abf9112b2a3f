import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/index.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { readAccountLimits } from '../../src/reconcile/quotaRefresh.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// quota_cmd as a real process (`cat` of a file, and a script that fails): its answer is cached in
// Redis for quota_cache; a failing hook or bad output is logged with the reason and changes
// nothing (the last answer stays); a secret of the account's env never reaches the log.
const T0 = 1_750_000_000_000;
const SECRET = 'quota-secret-token-1234567890';

describe('quota_cmd refresh (real processes, real Redis)', () => {
  const prefix = uniquePrefix('quota-refresh');
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-quota-'));
  const file = join(dir, 'quota.json');
  const clock = { now: T0 };
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (chunk, _enc, done) => (lines.push(String(chunk)), done()) }));
  let redis: Redis;
  let vmm: VmManager;
  let runs = 0;

  const input = (cmd: string[]): ConfigInput => ({
    redis: { url: REDIS_URL },
    accounts: { cloud: { max_resources: { cores: 100 }, quota_cmd: cmd, quota_cache: 60, env: { TOKEN: SECRET } } },
    groups: [{ name: 'g', account: 'cloud', resources: { cores: 2 } }],
  });

  beforeAll(async () => {
    redis = connect();
  });
  afterAll(async () => {
    await vmm?.close();
    await deleteKeysWithPrefix(redis, prefix);
    await redis.quit();
    rmSync(dir, { recursive: true, force: true });
  });

  it('caches the answer for quota_cache, and keeps it when the hook later prints a bad report or fails', async () => {
    vmm = new VmManager(input(['cat', file]), { redis, prefix, clock: () => clock.now });
    writeFileSync(file, JSON.stringify({ limits: { cores: 64 }, usage: { cores: 20 }, pool_usage: { cores: 4 } }));
    expect(await readAccountLimits(vmm, logger, clock.now)).toEqual(new Map([['cloud', { cores: 48 }]]));
    runs = (await vmm.quotas.cached('cloud'))!.fetchedAt;
    expect(runs).toBe(T0);

    // Within quota_cache the hook is not run again: a changed file changes nothing yet.
    writeFileSync(file, JSON.stringify({ limits: { cores: 64 }, usage: { cores: 0 } }));
    clock.now = T0 + 59_000;
    expect(await readAccountLimits(vmm, logger, clock.now)).toEqual(new Map([['cloud', { cores: 48 }]]));
    // Past it, the new answer counts.
    clock.now = T0 + 60_000;
    expect(await readAccountLimits(vmm, logger, clock.now)).toEqual(new Map([['cloud', { cores: 64 }]]));

    // A bad report: logged with what is wrong, and the last answer stays.
    writeFileSync(file, `{"limits": {"cores": -5}, "token": "${SECRET}"}`);
    clock.now = T0 + 120_000;
    expect(await readAccountLimits(vmm, logger, clock.now)).toEqual(new Map([['cloud', { cores: 64 }]]));
    expect((await vmm.quotas.cached('cloud'))!.fetchedAt).toBe(T0 + 60_000);
    expect(lines.join('')).toMatch(/quota_cmd's output is not a quota report/);
    await vmm.close();

    // A hook that exits 3 (its stderr in the message, the secret masked).
    vmm = new VmManager(input(['sh', '-c', 'echo "no access with $TOKEN" >&2; exit 3']), { redis, prefix, clock: () => clock.now });
    clock.now = T0 + 180_000;
    expect(await readAccountLimits(vmm, logger, clock.now)).toEqual(new Map([['cloud', { cores: 64 }]]));
    const log = lines.join('');
    expect(log).toMatch(/quota_cmd of account cloud exited with code 3/);
    expect(log).not.toContain(SECRET);
  });
});
