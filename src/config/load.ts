import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError, parseConfig } from './parse.js';
import type { Config } from './schemas.js';

/** Reads a YAML config file and validates it with parseConfig. */
export function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  try {
    return parseConfig(data, env);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.message.replace('invalid vmpool config', `invalid vmpool config in ${path}`), err.issues);
    throw err;
  }
}
