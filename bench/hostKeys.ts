/**
 * Host-key lookup of the ssh health check, per check, at 1,000 and 100,000 VMs: the accept-new
 * store of older builds (the known_vms file, read whole on every check), the pool's store (one
 * rememberHostKey script call on a private redis-server), and the strict known_hosts file (parsed
 * once, then a stat and a map lookup). Client CPU and wall time per lookup.
 *   npx tsx bench/hostKeys.ts
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { CachedFile, lookupKnownHosts, lookupKnownVm, parseKnownHosts } from '../src/health/ssh.js';
import { VmManager } from '../src/pool/vmManager.js';
import { discardingLogger, markdownTable } from './lib/measure.js';
import { startPrivateRedis } from './lib/redisServer.js';

const SIZES = [1_000, 100_000];
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0cZ6yq2n6a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8';
const ipOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

/** CPU and wall ms per call of fn, over `n` calls (after a few to warm up). */
async function perCall(n: number, fn: (i: number) => unknown): Promise<{ cpuMs: number; wallMs: number }> {
  for (let i = 0; i < 5; i += 1) await fn(i);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i += 1) await fn(i);
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return { cpuMs: (cpu.user + cpu.system) / 1000 / n, wallMs: wall / n };
}

const dir = mkdtempSync(join(tmpdir(), 'vmpool-bench-hostkeys-'));
const server = await startPrivateRedis();
const redis = new Redis(server.url, { maxRetriesPerRequest: 2 });
const rows: string[][] = [];
try {
  for (const size of SIZES) {
    const names = Array.from({ length: size }, (_, i) => `vm-${i}`);
    const knownVms = join(dir, `known_vms_${size}`);
    writeFileSync(knownVms, names.map((n, i) => `${n} ${ipOf(i)} ${KEY}\n`).join(''));
    const knownHosts = join(dir, `known_hosts_${size}`);
    writeFileSync(knownHosts, names.map((_, i) => `${ipOf(i)} ${KEY}\n`).join(''));

    const prefix = `bench-hk-${size}`;
    const vmm = new VmManager({ groups: [{ name: 'g', max_vm_total: 100_000 }] }, { redis, prefix, logger: discardingLogger() });
    for (let i = 0; i < size; i += 1000) {
      await Promise.all(names.slice(i, i + 1000).map((n, j) => vmm.addVmToPool(ipOf(i + j), n, 'g')));
      await Promise.all(names.slice(i, i + 1000).map((n, j) => vmm.rememberHostKey(n, ipOf(i + j), KEY)));
    }
    const pick = (i: number) => (i * 7919) % size;
    const file = await perCall(size > 10_000 ? 20 : 200, (i) => lookupKnownVm(knownVms, names[pick(i)]!, ipOf(pick(i))));
    const store = await perCall(2_000, (i) => vmm.rememberHostKey(names[pick(i)]!, ipOf(pick(i)), KEY));
    const strictOld = await perCall(size > 10_000 ? 20 : 200, (i) => lookupKnownHosts(knownHosts, ipOf(pick(i)), 22));
    const cached = new CachedFile(knownHosts, parseKnownHosts);
    const strict = await perCall(2_000, (i) => cached.get().lookup(ipOf(pick(i)), 22));
    const f = (x: { cpuMs: number; wallMs: number }) => `${x.cpuMs.toFixed(3)} / ${x.wallMs.toFixed(3)}`;
    rows.push([size.toLocaleString('en'), f(file), f(store), f(strictOld), f(strict)]);
    await vmm.close();
  }
  console.log('Host-key lookup per health check, client CPU ms / wall ms:\n');
  console.log(
    markdownTable(
      ['VMs', 'accept-new, known_vms file (before)', 'accept-new, pool record (now)', 'known_hosts, read per check (before)', 'known_hosts, parsed on change (now)'],
      rows,
    ),
  );
} finally {
  await redis.quit();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
