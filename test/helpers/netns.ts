import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The reference hooks under examples/netns, which the tests run for real. */
export const NETNS_EXAMPLES = resolve(import.meta.dirname, '../../examples/netns');

/**
 * One test file's netns harness: its own dir with a client key, its own name prefix and /24, so
 * concurrent test files never share a host. cleanup() removes every namespace with the prefix.
 */
export interface NetnsHarness {
  dir: string;
  prefix: string;
  net: string;
  /** Private key that every host's sshd accepts. */
  privateKeyPath: string;
  /** Environment for the hooks (the command provider's `env`). */
  env: Record<string, string>;
  spawnCmd: string[];
  terminateCmd: string[];
  listCmd: string[];
  /** The host's sshd pid, from its pid file. */
  sshdPid(name: string): number;
  /** The host's public key line, `ssh-ed25519 AAAA... comment`. */
  hostPublicKey(name: string): string;
  cleanup(): Promise<void>;
}

export async function createNetnsHarness(): Promise<NetnsHarness> {
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-netns-'));
  const prefix = `t${randomBytes(3).toString('hex')}`;
  const r = randomBytes(2);
  // 198.18.0.0/15 is reserved for network tests; each harness takes one /24 of it.
  const net = `198.${18 + (r[0]! & 1)}.${r[1]!}`;
  const privateKeyPath = join(dir, 'id_ed25519');
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vmpool-test', '-f', privateKeyPath]);
  copyFileSync(`${privateKeyPath}.pub`, join(dir, 'authorized_keys'));
  const env = { VMPOOL_NETNS_DIR: dir, VMPOOL_NETNS_PREFIX: prefix, VMPOOL_NETNS_NET: net };
  const hostDir = (name: string) => join(dir, 'hosts', name);
  return {
    dir,
    prefix,
    net,
    privateKeyPath,
    env,
    spawnCmd: [join(NETNS_EXAMPLES, 'spawn.sh')],
    terminateCmd: [join(NETNS_EXAMPLES, 'terminate.sh')],
    listCmd: [join(NETNS_EXAMPLES, 'list.sh')],
    sshdPid: (name) => Number(readFileSync(join(hostDir(name), 'sshd.pid'), 'utf8').trim()),
    hostPublicKey: (name) => readFileSync(join(hostDir(name), 'ssh_host_ed25519_key.pub'), 'utf8').trim(),
    async cleanup() {
      const { stdout } = await run('ip', ['netns', 'list']);
      for (const line of stdout.split('\n')) {
        const name = line.split(' ')[0];
        if (!name?.startsWith(`${prefix}-`)) continue;
        await run(join(NETNS_EXAMPLES, 'terminate.sh'), [], { env: { ...process.env, ...env, VMPOOL_VM_NAME: name } }).catch(() => {});
        await run('ip', ['netns', 'del', name]).catch(() => {});
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Live (not zombie) processes whose process group is pgid. Reads /proc, so it needs Linux. */
export function liveGroupMembers(pgid: number): number[] {
  const members: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return members;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat && stat.pgrp === pgid && stat.state !== 'Z') members.push(Number(entry));
  }
  return members;
}

/** Whether pid is a live process (zombies count as dead: they hold no resources but a pid). */
export function isLive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== null && stat.state !== 'Z';
}

function readStat(pid: number): { state: string; pgrp: number } | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, pgrp: Number(rest[2]) };
  } catch {
    return null;
  }
}
