// Health checks against real hosts: network namespaces made by examples/netns, each running
// Debian's OpenSSH sshd. Needs root (ip netns), as CI has; skipped without it (failed under CI).
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createHealthCheck } from '../../src/health/index.js';
import type { HealthCheck } from '../../src/health/types.js';
import { createLogger } from '../../src/logger.js';
import { createProvider } from '../../src/providers/index.js';
import { decideOrphans } from '../../src/reconcile/orphanDecisions.js';
import type { Provider, ProviderGroup } from '../../src/providers/types.js';
import { createNetnsHarness, isLive, type NetnsHarness } from '../helpers/netns.js';
import { describeWithTools } from '../helpers/tools.js';

const run = promisify(execFile);
const logger = createLogger('test');
/** The pool id the hooks tag their hosts with (VMPOOL_POOL_ID). */
const POOL_ID = 'ssh-test';

let h: NetnsHarness;
let provider: Provider;

function groupWith(check: Record<string, unknown>): ProviderGroup {
  const config = parseConfig({
    groups: [
      {
        name: 'netns',
        provider: { type: 'command', spawn_cmd: h.spawnCmd, terminate_cmd: h.terminateCmd, list_cmd: h.listCmd, spawn_timeout: 20, env: h.env },
        check,
      },
    ],
  });
  return { index: 0, config: config.groups[0]!, poolId: POOL_ID };
}

let group: ProviderGroup;
const sshCheck = (extra: Record<string, unknown> = {}): HealthCheck =>
  createHealthCheck(groupWith({ type: 'ssh', private_key: h.privateKeyPath, known_hosts: join(h.dir, 'known_vms'), ...extra }), { logger });

describeWithTools(['ip netns', 'sshd', 'ssh-keygen'], 'netns hosts through the command provider', () => {
  beforeAll(async () => {
    h = await createNetnsHarness();
    group = groupWith({ type: 'ssh', private_key: h.privateKeyPath });
    provider = createProvider(group, { logger });
  });

  afterAll(async () => {
    await h?.cleanup();
  });

  it('spawns a real host that passes the ssh check, lists it, and terminates it idempotently', async () => {
    const lines: string[] = [];
    const m = await provider.spawn({ group, spawnId: 'n1', log: (l) => void lines.push(l) });
    expect(m.name).toMatch(new RegExp(`^${h.prefix}-\\d+-[0-9a-f]{6}$`));
    expect(m.ip.startsWith(`${h.net}.`)).toBe(true);
    expect(lines.some((l) => l.includes(`namespace ${m.name}`))).toBe(true);

    const check = sshCheck();
    const target = { vmName: m.name, vmIp: m.ip, group };
    expect(await check.check(target, { timeoutMs: 5000 })).toEqual({ ok: true, detail: `ssh root@${m.ip}:22: "echo hello" -> "hello"` });
    // accept-new remembered the key by VM name and address, and it matches the host's own key.
    const hostKey = h.hostPublicKey(m.name).split(' ').slice(0, 2).join(' ');
    expect(readFileSync(join(h.dir, 'known_vms'), 'utf8')).toBe(`${m.name} ${m.ip} ${hostKey}\n`);
    expect((await check.check(target, { timeoutMs: 5000 })).ok).toBe(true);

    const listed = await provider.list!(group);
    expect(listed.map((x) => [x.name, x.ip])).toEqual([[m.name, m.ip]]);
    expect(listed[0]!.createdAt).toBeGreaterThan(0);

    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
    expect(await provider.list!(group)).toEqual([]);
    const { stdout } = await run('ip', ['netns', 'list']);
    expect(stdout).not.toContain(m.name);
    const after = await check.check(target, { timeoutMs: 2000 });
    expect(after.ok).toBe(false);
  });

  it('fails the check for a wrong key, a changed host key, a killed sshd and a hung sshd', async () => {
    const m = await provider.spawn({ group, spawnId: 'n2' });
    const target = { vmName: m.name, vmIp: m.ip, group };
    const check = sshCheck({ known_hosts: join(h.dir, 'known_vms_2') });
    expect((await check.check(target, { timeoutMs: 5000 })).ok).toBe(true);

    // A key that the host does not accept.
    const otherKey = join(h.dir, 'other_key');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherKey]);
    const wrong = await sshCheck({ private_key: otherKey, known_hosts: join(h.dir, 'known_vms_2') }).check(target, { timeoutMs: 5000 });
    expect(wrong.ok).toBe(false);
    expect(wrong.detail).toMatch(/authentication methods failed/);

    // Another host with a new key answers at the same address (its slot is reused) under the old
    // name's check: accept-new refuses it.
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
    const again = await provider.spawn({ group, spawnId: 'n3' });
    expect(again.ip).toBe(m.ip);
    expect(again.name).not.toBe(m.name);
    const changed = await check.check(target, { timeoutMs: 5000 });
    expect(changed.ok).toBe(false);
    expect(changed.detail).toMatch(/host key changed for .* \(remembered in .*known_vms_2\)/);

    // A fresh check (fresh memory) accepts it; then sshd hangs, then dies.
    const fresh = sshCheck({ known_hosts: join(h.dir, 'known_vms_3') });
    expect((await fresh.check(target, { timeoutMs: 5000 })).ok).toBe(true);
    const pid = h.sshdPid(again.name);
    process.kill(pid, 'SIGSTOP');
    const hung = await fresh.check(target, { timeoutMs: 700 });
    process.kill(pid, 'SIGCONT');
    expect(hung.ok).toBe(false);
    expect(hung.detail).toMatch(/timed out/i);
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 50 && isLive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    const dead = await fresh.check(target, { timeoutMs: 2000 });
    expect(dead.ok).toBe(false);
    // Refused, or reset when the kernel had queued the connection just before sshd died.
    expect(dead.detail).toMatch(/ECONNREFUSED|ECONNRESET/);
    await provider.terminate({ group, vmName: again.name, vmIp: again.ip });
  });

  it('checks strictly against an OpenSSH known_hosts file, plain or hashed', async () => {
    const m = await provider.spawn({ group, spawnId: 'n4' });
    const target = { vmName: m.name, vmIp: m.ip, group };
    const file = join(h.dir, 'known_hosts');
    const strict = sshCheck({ host_key_policy: 'known_hosts', known_hosts: file });

    writeFileSync(file, `# nothing about this host\n10.0.0.1 ${h.hostPublicKey(m.name)}\n`);
    const missing = await strict.check(target, { timeoutMs: 5000 });
    expect(missing).toMatchObject({ ok: false });
    expect(missing.detail).toMatch(/host not in .*known_hosts/);

    writeFileSync(file, `${m.ip} ${h.hostPublicKey(m.name)}\n`);
    expect((await strict.check(target, { timeoutMs: 5000 })).ok).toBe(true);

    // ssh-keygen -H rewrites the file with hashed host names, as HashKnownHosts does.
    await run('ssh-keygen', ['-H', '-f', file]);
    expect(readFileSync(file, 'utf8')).toMatch(/^\|1\|/);
    expect((await strict.check(target, { timeoutMs: 5000 })).ok).toBe(true);

    const otherHostKey = join(h.dir, 'other_host_key');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherHostKey]);
    writeFileSync(file, `${m.ip} ${readFileSync(`${otherHostKey}.pub`, 'utf8')}`);
    const mismatch = await strict.check(target, { timeoutMs: 5000 });
    expect(mismatch.ok).toBe(false);
    expect(mismatch.detail).toMatch(/host key ssh-ed25519 does not match/);
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
  });

  it('runs tcp and command checks against a real host', async () => {
    const m = await provider.spawn({ group, spawnId: 'n5' });
    const target = { vmName: m.name, vmIp: m.ip, group };
    expect(await createHealthCheck(groupWith({ type: 'tcp', port: 22 }), { logger }).check(target, { timeoutMs: 2000 })).toEqual({
      ok: true,
      detail: `tcp ${m.ip}:22: connected`,
    });
    const closed = await createHealthCheck(groupWith({ type: 'tcp', port: 23 }), { logger }).check(target, { timeoutMs: 2000 });
    expect(closed.ok).toBe(false);
    expect(closed.detail).toMatch(/ECONNREFUSED/);

    // A livecheck hook that uses the VM's address from its environment, as resalloc's do.
    const livecheck = join(h.dir, 'livecheck.sh');
    writeFileSync(livecheck, '#!/usr/bin/env bash\nset -euo pipefail\necho "checking $VMPOOL_VM_NAME"\nexec 3<>"/dev/tcp/$VMPOOL_VM_IP/22"\nhead -c 7 <&3\n', { mode: 0o755 });
    const ok = await createHealthCheck(groupWith({ type: 'command', cmd: [livecheck] }), { logger }).check(target, { timeoutMs: 3000 });
    expect(ok).toEqual({ ok: true, detail: 'check cmd exited with code 0: "SSH-2.0"' });

    process.kill(h.sshdPid(m.name), 'SIGKILL');
    const down = await createHealthCheck(groupWith({ type: 'command', cmd: [livecheck] }), { logger }).check(target, { timeoutMs: 3000 });
    expect(down.ok).toBe(false);
    expect(down.detail).toMatch(/exited with code 1/);

    const hang = await createHealthCheck(groupWith({ type: 'command', cmd: 'sleep 300' }), { logger }).check(target, { timeoutMs: 300 });
    expect(hang).toEqual({ ok: false, detail: 'check cmd timed out after 0.3s (process group killed)' });
    await provider.terminate({ group, vmName: m.name, vmIp: m.ip });
  });

  it('finds a host made outside the pool with list and terminates it after two passes', async () => {
    const known = await provider.spawn({ group, spawnId: 'n6' });
    // A host the pool never heard of, made by running the hook by hand.
    const { stdout } = await run(h.spawnCmd[0]!, [], { env: { ...process.env, ...h.env, VMPOOL_SPAWN_ID: 'by-hand', VMPOOL_POOL_ID: POOL_ID } });
    const leak = JSON.parse(stdout.trim().split('\n').at(-1)!) as { name: string; ip: string };
    const poolVms = [{ name: known.name, ip: known.ip, state: 'ready' as const, group: 'netns' }];

    const graceMs = 1000;
    const first = decideOrphans({ group: 'netns', poolId: POOL_ID, poolVms, machines: await provider.list!(group), previousUnknown: new Map(), previousMissing: new Map(), now: Date.now(), graceMs });
    expect(first.terminateMachines).toEqual([]);
    expect([...first.unknown.keys()]).toEqual([leak.name]);

    // The next pass, after the grace (the host's created_at is in whole seconds).
    const later = Date.now() + 2 * graceMs;
    const second = decideOrphans({ group: 'netns', poolId: POOL_ID, poolVms, machines: await provider.list!(group), previousUnknown: first.unknown, previousMissing: first.missing, now: later, graceMs });
    expect(second.terminateMachines.map((x) => x.name)).toEqual([leak.name]);
    for (const x of second.terminateMachines) await provider.terminate({ group, vmName: x.name, vmIp: x.ip ?? null });
    expect((await provider.list!(group)).map((x) => x.name)).toEqual([known.name]);
    await provider.terminate({ group, vmName: known.name, vmIp: known.ip });
  });
});
