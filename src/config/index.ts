// The config file: its schema, parsing, loading, environment overrides, redaction and template.
export {
  checkConfigSchema,
  commandCheckSchema,
  commandLineSchema,
  commandProviderSchema,
  configSchema,
  GROUP_NAME_PATTERN,
  groupConfigSchema,
  localProviderSchema,
  providerCheckSchema,
  providerConfigSchema,
  redisConfigSchema,
  sshCheckSchema,
  targetWaitPercentiles,
  tcpCheckSchema,
  webConfigSchema,
  webScopes,
} from './schemas.js';
export type { CheckConfig, Config, ConfigInput, GroupConfig, GroupInput, ProviderConfig, WebConfig, WebScope } from './schemas.js';
export { groupIndexOf, groupNameOf, isGroupName, type GroupRef } from './groups.js';
export { ConfigError, isParsedConfig, parseConfig, type ConfigIssue } from './parse.js';
export { applyEnvironment, redisIssues } from './environment.js';
export { loadConfig } from './load.js';
export { LAUNCH_FINGERPRINT_LENGTH, launchFingerprint, launchShape, type LaunchShape } from './fingerprint.js';
export { redactedConfig } from './redaction.js';
export { configTemplate } from './template.js';
export { CONFIG_SCHEMA_FILE, configJsonSchema, configSchemaPath } from './jsonSchema.js';
