import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLError } from 'yaml';
import { ConfigError, parseConfig } from './parse.js';
import type { Config } from './schemas.js';

/**
 * Where a YAML error is, and its kind: never the text of the line, which may hold a secret (the
 * YAML library's message quotes it).
 */
function yamlErrorPlace(err: unknown): string {
  if (err instanceof YAMLError) {
    const at = err.linePos?.[0];
    const where = at ? `line ${at.line}, column ${at.col}` : 'an unknown place';
    return `${err.code.toLowerCase().replace(/_/g, ' ')} at ${where} (the line is not shown: it may hold a secret)`;
  }
  return 'the YAML parser failed (its message is not shown: it may quote a secret)';
}

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
    // Warnings would quote the file's text; errors below say only where.
    data = parseYaml(text, { logLevel: 'error' });
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${yamlErrorPlace(err)}`);
  }
  try {
    return parseConfig(data, env);
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(err.message.replace('invalid vmpool config', `invalid vmpool config in ${path}`), err.issues);
    throw err;
  }
}
