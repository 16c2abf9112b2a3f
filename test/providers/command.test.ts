import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import { CommandProvider, ProviderError, parseListOutput, parseSpawnOutput } from '../../src/providers/command.js';
import { HOOK_LOG_MAX_LINES } from '../../src/providers/hook.js';
import { createProvider } from '../../src/providers/index.js';
import { SpawnAborted, type ProviderGroup } from '../../src/providers/types.js';
import { isLive, liveGroupMembers } from '../helpers/netns.js';

const logger = createLogger('test');
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmpool-cmd-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

let n = 0;
/** Writes an executable bash hook and returns its path. */
function hook(body: string): string {
  const path = join(dir, `hook-${++n}.sh`);
  writeFileSync(path, `#!/usr/bin/env bash\nset -euo pipefail\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** A group on the command provider, validated by the real config schema. */
function group(provider: Record<string, unknown>): ProviderGroup {
  const config = parseConfig({
    groups: [{ name: 'x86', provider: { type: 'command', kill_grace: 0.2, ...provider }, check: { type: 'tcp', port: 22 } }],
  });
  return { index: 0, config: config.groups[0]! };
}

function provider(g: ProviderGroup): CommandProvider {
  return createProvider(g, { logger }) as CommandProvider;
}

/** A terminate hook that records each call's name and IP, so tests see what was cleaned up. */
function recordingTerminate(): { path: string; calls: () => string[] } {
  const file = join(dir, `terminated-${++n}`);
  return {
    path: hook(`echo "$VMPOOL_VM_NAME $VMPOOL_VM_IP" >> ${file}`),
    calls: () => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : []),
  };
}

describe('command provider spawn', () => {
  it('returns the machine from a JSON last line, logs each line, and passes values only in the environment', async () => {
    const envFile = join(dir, 'env-seen');
    const spawn = hook(
      `echo "args: $*" > ${envFile}
echo "group=$VMPOOL_GROUP name=$VMPOOL_GROUP_NAME spawn=$VMPOOL_SPAWN_ID extra=$MY_SETTING" >> ${envFile}
echo "creating a machine"
echo '{"ip": "192.0.2.10", "name": "builder-1"}'`,
    );
    const term = recordingTerminate();
    const g = group({ spawn_cmd: `${spawn} --flavor $HOME`, terminate_cmd: [term.path], env: { MY_SETTING: 'big' } });
    const lines: string[] = [];
    const machine = await provider(g).spawn({ group: g, spawnId: 'sp-1', log: (l) => void lines.push(l) });
    expect(machine).toEqual({ ip: '192.0.2.10', name: 'builder-1' });
    // "$HOME" reached the hook literally: the command string was split, not run by a shell.
    expect(readFileSync(envFile, 'utf8')).toBe('args: --flavor $HOME\ngroup=0 name=x86 spawn=sp-1 extra=big\n');
    expect(lines).toContain('spawn_cmd stdout: creating a machine');
    expect(term.calls()).toEqual([]);
  });

  it("accepts Copr's IP=... vm_name=... format", async () => {
    const g = group({ spawn_cmd: hook('echo "PLAY RECAP ..."\necho "IP=2001:db8::7 vm_name=copr-builder-42"'), terminate_cmd: hook('true') });
    expect(await provider(g).spawn({ group: g, spawnId: 'sp-2' })).toEqual({ ip: '2001:db8::7', name: 'copr-builder-42' });
  });

  it('fails on garbage output and terminates the name the hook printed, so nothing leaks', async () => {
    const term = recordingTerminate();
    const g = group({
      spawn_cmd: hook(`echo '{"name": "half-made-3", "ip": "192.0.2.33"}'\necho "Traceback: something broke"`),
      terminate_cmd: term.path,
    });
    const err = await provider(g).spawn({ group: g, spawnId: 'sp-3' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProviderError);
    expect((err as Error).message).toMatch(/last line "Traceback: something broke" is neither/);
    expect((err as Error).message).toMatch(/terminated half-made-3/);
    expect(term.calls()).toEqual(['half-made-3 192.0.2.33']);
  });

  it('fails on garbage without a printed name and runs no terminate', async () => {
    const term = recordingTerminate();
    const g = group({ spawn_cmd: hook('echo "all good, trust me"'), terminate_cmd: term.path });
    await expect(provider(g).spawn({ group: g, spawnId: 'sp-4' })).rejects.toThrow(/neither a JSON object/);
    expect(term.calls()).toEqual([]);
  });

  it.each([
    ['a name that breaks the pattern', '{"name": "bad name;rm", "ip": "192.0.2.1"}', /name "bad name;rm" does not match/],
    ['an IP that is not one', '{"name": "ok-1", "ip": "192.0.2.300"}', /ip "192.0.2.300" is not an IPv4 or IPv6 address/],
    ['a JSON array', '["192.0.2.1"]', /neither a JSON object/],
  ])('rejects %s', async (_what, line, message) => {
    const g = group({ spawn_cmd: hook(`echo '${line}'`), terminate_cmd: hook('true') });
    await expect(provider(g).spawn({ group: g, spawnId: 'sp-5' })).rejects.toThrow(message);
  });

  it('fails on a non-zero exit with the code and the last output, cleaning up a printed name', async () => {
    const term = recordingTerminate();
    const g = group({ spawn_cmd: hook('echo "IP=192.0.2.9 vm_name=dying-9"\necho "quota exceeded" >&2\nexit 3'), terminate_cmd: term.path });
    await expect(provider(g).spawn({ group: g, spawnId: 'sp-6' })).rejects.toThrow(/spawn_cmd exited with code 3; last output: .*"quota exceeded"/);
    expect(term.calls()).toEqual(['dying-9 192.0.2.9']);
  });

  it('says so when the cleanup terminate fails too', async () => {
    const g = group({ spawn_cmd: hook('echo "IP=192.0.2.9 vm_name=dying-10"\nexit 1'), terminate_cmd: hook('echo "cloud down"; exit 4') });
    await expect(provider(g).spawn({ group: g, spawnId: 'sp-7' })).rejects.toThrow(/terminating dying-10 failed too: terminate_cmd for dying-10 exited with code 4/);
  });

  it('kills a hanging hook with its whole process group at the timeout, and cleans up', async () => {
    const pidFile = join(dir, 'hang-pids');
    const term = recordingTerminate();
    // The hook ignores SIGTERM and has a child and a grandchild that would outlive it.
    const spawn = hook(`trap '' TERM
echo '{"name": "slow-11"}'
sleep 300 &
bash -c 'trap "" TERM; sleep 300' &
echo "$$ $(jobs -p | tr '\\n' ' ')" > ${pidFile}
wait`);
    const g = group({ spawn_cmd: spawn, terminate_cmd: term.path, spawn_timeout: 0.5, kill_grace: 0.3 });
    await expect(provider(g).spawn({ group: g, spawnId: 'sp-8' })).rejects.toThrow(/spawn_cmd timed out after 0.5s \(process group killed\)/);
    const pids = readFileSync(pidFile, 'utf8').trim().split(/\s+/).map(Number);
    expect(pids.length).toBeGreaterThanOrEqual(3);
    expect(pids.filter(isLive)).toEqual([]);
    expect(liveGroupMembers(pids[0]!)).toEqual([]);
    expect(term.calls()).toEqual(['slow-11 ']);
  });

  it('stops at once when aborted (the process stops): kills the hook\'s process group and names the machine it printed, without terminating it', async () => {
    const pidFile = join(dir, 'abort-pids');
    const term = recordingTerminate();
    const spawn = hook(`echo '{"name": "early-12"}'
sleep 300 &
echo "$$ $!" > ${pidFile}
wait`);
    const g = group({ spawn_cmd: spawn, terminate_cmd: term.path });
    const stop = new AbortController();
    const printed: unknown[] = [];
    const spawning = provider(g).spawn({
      group: g,
      spawnId: 'sp-12',
      signal: stop.signal,
      onMachine: (m) => {
        printed.push(m);
        setTimeout(() => stop.abort(), 100);
      },
    });
    const err = (await spawning.catch((e: unknown) => e)) as SpawnAborted;
    expect(err).toBeInstanceOf(SpawnAborted);
    expect(err.message).toMatch(/stopped as the process shuts down \(process group killed\); it had printed early-12/);
    expect(err.machine).toEqual({ name: 'early-12', ip: null });
    expect(printed).toEqual([{ name: 'early-12', ip: null }]);
    const pids = readFileSync(pidFile, 'utf8').trim().split(/\s+/).map(Number);
    expect(pids.filter(isLive)).toEqual([]);
    expect(liveGroupMembers(pids[0]!)).toEqual([]);
    // The caller terminates it (a terminate job, or within what is left of the stop).
    expect(term.calls()).toEqual([]);
  });

  it('keeps a bounded log and still reads the last line of a very long output', async () => {
    const g = group({
      spawn_cmd: hook(`for i in $(seq 1 5000); do echo "progress line $i of a chatty playbook with quite some padding"; done
echo '{"ip": "192.0.2.50", "name": "chatty-50"}'`),
      terminate_cmd: hook('true'),
    });
    const lines: string[] = [];
    expect(await provider(g).spawn({ group: g, spawnId: 'sp-9', log: (l) => void lines.push(l) })).toEqual({ ip: '192.0.2.50', name: 'chatty-50' });
    expect(lines.length).toBe(HOOK_LOG_MAX_LINES + 1);
    expect(lines.at(-1)).toMatch(/output beyond 1000 lines not logged/);
  });

  it('fails clearly when the program does not exist', async () => {
    const g = group({ spawn_cmd: join(dir, 'no-such-hook'), terminate_cmd: hook('true') });
    await expect(provider(g).spawn({ group: g, spawnId: 'sp-10' })).rejects.toThrow(/spawn_cmd could not start: .*ENOENT/);
  });
});

describe('command provider terminate', () => {
  it('passes the VM in the environment and succeeds on exit 0', async () => {
    const term = recordingTerminate();
    const g = group({ spawn_cmd: hook('true'), terminate_cmd: term.path });
    await provider(g).terminate({ group: g, vmName: 'gone-1', vmIp: '192.0.2.4' });
    expect(term.calls()).toEqual(['gone-1 192.0.2.4']);
  });

  it('throws on a non-zero exit, so the VM stays terminating and is retried', async () => {
    const g = group({ spawn_cmd: hook('true'), terminate_cmd: hook('echo "API error 503" >&2; exit 2') });
    await expect(provider(g).terminate({ group: g, vmName: 'stuck-1', vmIp: null })).rejects.toThrow(/terminate_cmd for stuck-1 exited with code 2; last output: "API error 503"/);
  });

  it('throws when terminate hangs past its timeout', async () => {
    const g = group({ spawn_cmd: hook('true'), terminate_cmd: hook('sleep 300'), terminate_timeout: 0.3, kill_grace: 0 });
    await expect(provider(g).terminate({ group: g, vmName: 'stuck-2', vmIp: null })).rejects.toThrow(/timed out after 0.3s/);
  });
});

describe('command provider list', () => {
  it('parses JSON and plain lines', async () => {
    const g = group({
      spawn_cmd: hook('true'),
      terminate_cmd: hook('true'),
      list_cmd: hook(`echo '{"name": "a-1", "ip": "192.0.2.1", "created_at": 1700000000}'
echo ''
echo 'b-2 192.0.2.2 2023-11-14T22:13:20Z'
echo 'c-3'`),
    });
    expect(await provider(g).list!(g)).toEqual([
      { name: 'a-1', ip: '192.0.2.1', createdAt: 1_700_000_000_000 },
      { name: 'b-2', ip: '192.0.2.2', createdAt: 1_700_000_000_000 },
      { name: 'c-3', ip: null, createdAt: null },
    ]);
  });

  it('fails naming the bad line', async () => {
    const g = group({ spawn_cmd: hook('true'), terminate_cmd: hook('true'), list_cmd: hook(`echo 'a-1 192.0.2.1'\necho 'b-2 not-an-ip'`) });
    await expect(provider(g).list!(g)).rejects.toThrow(/list_cmd line 2 "b-2 not-an-ip": ip "not-an-ip" is not an IP address/);
  });

  it('has no list without list_cmd', () => {
    const g = group({ spawn_cmd: hook('true'), terminate_cmd: hook('true') });
    expect(provider(g).list).toBeUndefined();
  });
});

describe('output parsers', () => {
  it('uses the last non-empty line only', () => {
    expect(parseSpawnOutput('{"ip":"192.0.2.1","name":"old"}\nIP=192.0.2.2 vm_name=new\n\n')).toEqual({ ip: '192.0.2.2', name: 'new' });
    expect(() => parseSpawnOutput('\n\n')).toThrow(/printed nothing/);
  });

  it('rejects list lines with bad dates, names and shapes', () => {
    expect(() => parseListOutput('a-1 192.0.2.1 yesterday')).toThrow(/line 1 .*created_at "yesterday"/);
    expect(() => parseListOutput('ok\n-bad')).toThrow(/line 2 "-bad": name "-bad"/);
    expect(() => parseListOutput('{"name": 5}')).toThrow(/line 1 .*name 5 does not match/);
    expect(() => parseListOutput('{oops')).toThrow(/line 1 "\{oops" is not valid JSON/);
    expect(() => parseListOutput('a b c d e')).toThrow(/more than 4 fields/);
    expect(() => parseListOutput('{"name": "a-1", "pool": 7}')).toThrow(/line 1 .*pool 7 is not a string/);
  });

  it('reads the pool id a machine carries, in either format (`-` for an empty field)', () => {
    expect(parseListOutput('a-1 192.0.2.1 1700000000 ci\nb-2 - - ci\nc-3\n{"name":"d-4","pool":"staging"}\n{"name":"e-5","pool":""}')).toEqual([
      { name: 'a-1', ip: '192.0.2.1', createdAt: 1_700_000_000_000, pool: 'ci' },
      { name: 'b-2', ip: null, createdAt: null, pool: 'ci' },
      { name: 'c-3', ip: null, createdAt: null },
      { name: 'd-4', ip: null, createdAt: null, pool: 'staging' },
      { name: 'e-5', ip: null, createdAt: null },
    ]);
  });
});

describe('config', () => {
  it.each(['netns', 'libvirt', 'openstack'])('accepts the %s example config', (name) => {
    const config = loadConfig(resolve(import.meta.dirname, `../../examples/${name}/vmpool.yaml`), {});
    expect(config.groups[0]!.provider.type).toBe('command');
    expect(config.groups[0]!.check.type).toBe('ssh');
  });

  it('defaults a group to the local provider and the ssh check', () => {
    const g = parseConfig({ groups: [{ name: 'g' }] }).groups[0]!;
    expect(g.provider.type).toBe('local');
    expect(g.check).toEqual({ type: 'ssh', user: 'root', host_key_policy: 'accept-new' });
  });

  it('rejects unknown keys, missing hooks and a command provider ssh check without a key', () => {
    expect(() => parseConfig({ groups: [{ name: 'g', provider: { type: 'command', spawn_cmd: 'a' } }] })).toThrow(/groups.0.provider.terminate_cmd/);
    expect(() => parseConfig({ groups: [{ name: 'g', provider: { type: 'cloud' } }] })).toThrow(/groups.0.provider.type/);
    expect(() => parseConfig({ groups: [{ name: 'g', check: { type: 'tcp', port: 22, retries: 3 } }] })).toThrow(/groups.0.check.retries: no such key \(unknown option\); its value is not shown/);
    expect(() => parseConfig({ groups: [{ name: 'g', provider: { type: 'command', spawn_cmd: 'a', terminate_cmd: 'b' } }] })).toThrow(
      /groups.0.check.private_key: got nothing, expected a private key file/,
    );
  });
});
