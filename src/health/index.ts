import { join } from 'node:path';
import { localClientKeyPath, defaultLocalStateDir, localPoolDir } from '../providers/local.js';
import type { Provider, ProviderDeps, ProviderGroup } from '../providers/types.js';
import { CommandHealthCheck } from './command.js';
import { defaultKnownVmsPath, SshHealthCheck, type HostKeyStore } from './ssh.js';
import { TcpHealthCheck } from './tcp.js';
import type { HealthCheck, HealthCheckResult, HealthCheckTarget } from './types.js';

export type { HealthCheck, HealthCheckResult, HealthCheckTarget } from './types.js';
export { SshHealthCheck, lookupKnownVm, lookupKnownHosts, defaultKnownVmsPath } from './ssh.js';
export type { HostKeyStore } from './ssh.js';

/** What a health check may use: the logger, the group's provider, and where accept-new keeps host keys. */
export interface HealthCheckDeps extends ProviderDeps {
  provider?: Provider;
  /** The pool (VmManager): accept-new host keys go into the VM records. Without it, a file of this machine. */
  hostKeys?: HostKeyStore;
}
export { TcpHealthCheck } from './tcp.js';
export { CommandHealthCheck } from './command.js';

/** Check `provider`: the provider's own check method answers. */
class ProviderHealthCheck implements HealthCheck {
  readonly type = 'provider';
  constructor(private readonly provider: Provider) {}

  async check(target: HealthCheckTarget, { timeoutMs }: { timeoutMs: number }): Promise<HealthCheckResult> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<HealthCheckResult>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, detail: `provider check timed out after ${timeoutMs / 1000}s` }), timeoutMs);
    });
    const run = this.provider.check!(target).then(
      (ok) => ({ ok, detail: `provider check: ${ok ? 'healthy' : 'unhealthy'}` }),
      (err: Error) => ({ ok: false, detail: `provider check failed: ${err.message}` }),
    );
    try {
      return await Promise.race([run, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The health check of a group, from its `check` config. For the ssh check of a group on the local
 * provider, the port, key and known-VMs file default to the local provider's. With deps.hostKeys,
 * accept-new keeps host keys in the pool (the file is then only read once, for keys an older vmpool
 * remembered there).
 */
export function createHealthCheck(group: ProviderGroup, deps: HealthCheckDeps): HealthCheck {
  const check = group.config.check;
  const provider = group.config.provider;
  switch (check.type) {
    case 'ssh': {
      // The local provider's client key is shared by the pools of the machine; known VMs are per pool.
      const sharedDir = provider.type === 'local' ? (provider.state_dir ?? defaultLocalStateDir()) : null;
      const localDir = sharedDir ? localPoolDir(sharedDir, group.poolId) : null;
      const privateKeyPath = check.private_key ?? (sharedDir ? localClientKeyPath(sharedDir) : null);
      if (!privateKeyPath) throw new Error(`group ${group.config.name}: check.private_key is required for the ssh check`);
      const knownHostsPath = check.known_hosts ?? (localDir ? join(localDir, 'known_vms') : defaultKnownVmsPath());
      return new SshHealthCheck({
        user: check.user,
        privateKeyPath,
        port: check.port ?? (provider.type === 'local' ? provider.port : 22),
        hostKeyPolicy: check.host_key_policy,
        knownHostsPath,
        ...(deps.hostKeys ? { hostKeys: deps.hostKeys } : {}),
      });
    }
    case 'tcp':
      return new TcpHealthCheck(check.port);
    case 'command':
      return new CommandHealthCheck(check.cmd, check.env, deps.logger.child({ group: group.config.name }), {
        passEnv: check.pass_env,
        secrets: deps.secrets ?? [],
      });
    case 'provider': {
      if (!deps.provider?.check) throw new Error(`group ${group.config.name}: check type "provider" needs a provider with a check method (${provider.type} has none)`);
      return new ProviderHealthCheck(deps.provider);
    }
  }
}
