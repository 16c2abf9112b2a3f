import { CommandProvider } from './command.js';
import { LocalProvider } from './local.js';
import type { Provider, ProviderDeps, ProviderGroup } from './types.js';

export type * from './types.js';
export { CommandProvider, ProviderError, parseSpawnOutput, parseListOutput, hookEnv } from './command.js';
export { LocalProvider, defaultLocalStateDir, localClientKeyPath, localPoolDir } from './local.js';

/** The provider of a group, from its `provider` config (default: local). */
export function createProvider(group: ProviderGroup, deps: ProviderDeps): Provider {
  const config = group.config.provider;
  switch (config.type) {
    case 'local':
      return new LocalProvider(config, deps, group.poolId);
    case 'command':
      return new CommandProvider(config, deps);
  }
}
