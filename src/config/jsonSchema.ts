import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { configSchema } from './schemas.js';

/** Where the published JSON Schema lives, relative to the package root. */
export const CONFIG_SCHEMA_FILE = 'schema/vmpool.config.schema.json';

/**
 * The JSON Schema of the config file, from the zod schema's input side (what a file may say:
 * defaults make keys optional). Draft 7, which editors' YAML language servers read. Unknown keys
 * are refused (additionalProperties: false), as parseConfig refuses them.
 */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(configSchema, { io: 'input', target: 'draft-7', unrepresentable: 'any' }) as Record<string, unknown>;
  return { $schema: schema.$schema, title: 'vmpool config', ...schema };
}

/**
 * The absolute path of the published JSON Schema file in the installed package: found upward from
 * this module, which is src/config/ in a checkout and dist/src/config/ when built.
 */
export function configSchemaPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, CONFIG_SCHEMA_FILE);
    if (existsSync(candidate) && existsSync(join(dir, 'package.json'))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  // Not found (a bundled copy?): the checkout's layout.
  return fileURLToPath(new URL(`../../${CONFIG_SCHEMA_FILE}`, import.meta.url));
}
