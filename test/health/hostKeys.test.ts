// accept-new host keys kept in the pool's VM records, against real hosts (network namespaces with
// Debian's OpenSSH sshd, as test/health/ssh.test.ts): every checker gets the same answer from
// Redis, a changed key is refused, the key goes with the VM, and an older known_vms file's keys are
// taken over. The strict known_hosts file is parsed once and again only when it changes.
import { execFile } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createHealthCheck } from '../../src/health/index.js';
import { CachedFile } from '../../src/health/ssh.js';
import { createLogger } from '../../src/logger.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { createProvider } from '../../src/providers/index.js';
import type { Provider, ProviderGroup } from '../../src/providers/types.js';
import { createNetnsHarness, type NetnsHarness } from '../helpers/netns.js';
import { describeWithTools } from '../helpers/tools.js';
import { connect, deleteKeysWithPrefix, poolKeys, uniquePrefix } from '../helpers/redis.js';

const run = promisify(execFile);
const logger = createLogger('test');
const prefix = uniquePrefix('hostkeys');

let h: NetnsHarness;
let provider: Provider;
let group: ProviderGroup;
let redis: Redis;
let vmm: VmManager;

const groupConfig = () => ({
  name: 'netns',
  provider: { type: 'command' as const, spawn_cmd: h.spawnCmd, terminate_cmd: h.terminateCmd, list_cmd: h.listCmd, spawn_timeout: 20, env: h.env },
  check: { type: 'ssh' as const, private_key: h.privateKeyPath },
});

/** An ssh check as a health process builds it: accept-new keys in the pool, `knownVms` the machine's old file. */
const poolCheck = (knownVms: string) =>
  createHealthCheck({ index: 0, config: parseConfig({ groups: [{ ...groupConfig(), check: { type: 'ssh', private_key: h.privateKeyPath, known_hosts: knownVms } }] }, {}).groups[0]! }, { logger, hostKeys: vmm });

describeWithTools(['ip netns', 'sshd', 'ssh-keygen'], 'accept-new host keys in the pool', () => {
  beforeAll(async () => {
    h = await createNetnsHarness();
    const config = parseConfig({ redis: { prefix }, groups: [groupConfig()] }, {});
    group = { index: 0, config: config.groups[0]! };
    provider = createProvider(group, { logger });
    redis = connect();
    vmm = new VmManager(config, { redis, prefix });
  });

  afterAll(async () => {
    await vmm?.close();
    if (redis) {
      await deleteKeysWithPrefix(redis, prefix);
      await redis.quit();
    }
    await h?.cleanup();
  });

  it('are kept in the VM record: every checker agrees, a changed key is refused, the key goes with the VM', async () => {
    const m = await provider.spawn({ group, spawnId: 'k1' });
    const target = { vmName: m.name, vmIp: m.ip, group };
    const hostKey = h.hostPublicKey(m.name).split(' ').slice(0, 2).join(' ');
    await vmm.addVmToPool(m.ip, m.name, 'netns');

    // Two health replicas on two machines (two files that do not exist): one answer, from Redis.
    const first = poolCheck(join(h.dir, 'a', 'known_vms'));
    const second = poolCheck(join(h.dir, 'b', 'known_vms'));
    expect(await first.check(target, { timeoutMs: 5000 })).toEqual({ ok: true, detail: `ssh root@${m.ip}:22: "echo hello" -> "hello"` });
    expect(await redis.hget(poolKeys(prefix).vm(m.name), 'host_key')).toBe(hostKey);
    expect((await second.check(target, { timeoutMs: 5000 })).ok).toBe(true);
    expect(existsSync(join(h.dir, 'a', 'known_vms'))).toBe(false);

    // Another key kept for the VM (as if another host had answered first): refused by every checker.
    const otherHostKey = join(h.dir, 'other_host_key_k');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherHostKey]);
    const other = readFileSync(`${otherHostKey}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    await redis.hset(poolKeys(prefix).vm(m.name), 'host_key', other);
    const changed = await second.check(target, { timeoutMs: 5000 });
    expect(changed.ok).toBe(false);
    expect(changed.detail).toMatch(/host key changed for .* \(kept in the pool\)/);

    // A VM the pool does not have at that address is not trusted (nor remembered).
    const stranger = await first.check({ ...target, vmName: 'not-in-pool' }, { timeoutMs: 5000 });
    expect(stranger.ok).toBe(false);
    expect(stranger.detail).toMatch(/not-in-pool .* is not in the pool/);

    // Removed from the pool, the VM's key is forgotten: a VM added again under that name starts afresh.
    await vmm.startVmTermination(m.name);
    await vmm.removeVmFromPool(m.name);
    await vmm.addVmToPool(m.ip, m.name, 'netns');
    expect(await redis.hget(poolKeys(prefix).vm(m.name), 'host_key')).toBeNull();
    expect((await first.check(target, { timeoutMs: 5000 })).ok).toBe(true);
    expect(await redis.hget(poolKeys(prefix).vm(m.name), 'host_key')).toBe(hostKey);
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
  });

  it("take over a key an older vmpool remembered in the machine's known_vms file", async () => {
    const m = await provider.spawn({ group, spawnId: 'k2' });
    const target = { vmName: m.name, vmIp: m.ip, group };
    await vmm.addVmToPool(m.ip, m.name, 'netns');
    const legacy = join(h.dir, 'legacy_known_vms');
    const otherHostKey = join(h.dir, 'other_host_key_l');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherHostKey]);
    const remembered = readFileSync(`${otherHostKey}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    writeFileSync(legacy, `${m.name} ${m.ip} ${remembered}\n`);
    const result = await poolCheck(legacy).check(target, { timeoutMs: 5000 });
    expect(result.ok).toBe(false);
    expect(result.detail).toMatch(/host key changed/);
    expect(await redis.hget(poolKeys(prefix).vm(m.name), 'host_key')).toBe(remembered);
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
  });
});

describe('a file read on change only', () => {
  // Its own dir: it needs no host, so it runs where the netns group is skipped.
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-cachedfile-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('parses once while the file is unchanged, and again when it changes', () => {
    const file = join(dir, 'cached_known_hosts');
    writeFileSync(file, '10.0.0.1 ssh-ed25519 AAAA\n');
    let parses = 0;
    const cached = new CachedFile(file, (text) => {
      parses += 1;
      return text.split('\n').filter(Boolean).length;
    });
    expect([cached.get(), cached.get(), cached.get()]).toEqual([1, 1, 1]);
    expect(parses).toBe(1);
    appendFileSync(file, '10.0.0.2 ssh-ed25519 BBBB\n');
    expect(cached.get()).toBe(2);
    expect(parses).toBe(2);
  });
});
