// Generates docs/reference/config.md and schema/vmpool.config.schema.json from the config's zod
// schema (src/config/schemas.ts). Run `npm run docs`; test/docs/generated.test.ts fails
// when the committed files differ.
import { configJsonSchema } from '../../src/config/index.js';
import { cell, code, typeText, type JsonSchema } from './jsonSchemaText.js';

/** The published JSON Schema file's text. */
export function configSchemaFile(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}

interface Row {
  key: string;
  type: string;
  default: string;
  description: string;
}

const LONG_DEFAULT = 60;

function defaultText(s: JsonSchema, required: boolean): string {
  if (s.default !== undefined) {
    const text = JSON.stringify(s.default);
    return text.length > LONG_DEFAULT ? 'see below' : code(text);
  }
  return required ? 'required' : '—';
}

/** The discriminated variants of a union (each an object with a `type` const), or null. */
function variantsOf(s: JsonSchema): { name: string; schema: JsonSchema }[] | null {
  const list = s.oneOf ?? s.anyOf;
  if (!list?.every((v) => v.properties?.type?.const !== undefined)) return null;
  return list.map((v) => ({ name: String(v.properties!.type!.const), schema: v }));
}

/** Rows for the properties of an object schema, nested objects flattened as `a.b`. */
function rows(s: JsonSchema, prefix: string, out: Row[], long: { key: string; value: unknown }[]): Row[] {
  for (const [name, child] of Object.entries(s.properties ?? {})) {
    const key = `${prefix}${name}`;
    const variants = variantsOf(child);
    const type = variants ? `object, type ${variants.map((v) => JSON.stringify(v.name)).join(' | ')} (below)` : typeText(child);
    out.push({ key, type, default: defaultText(child, s.required?.includes(name) ?? false), description: child.description ?? '' });
    if (child.default !== undefined && JSON.stringify(child.default).length > LONG_DEFAULT) long.push({ key, value: child.default });
    if (variants) continue;
    // Objects (also as one side of a union, such as tls or min_ready) and lists of objects.
    const objects = [child, ...(child.anyOf ?? [])].filter((c) => c.properties);
    for (const o of objects) rows(o, `${key}.`, out, long);
    const items = child.items;
    if (items?.properties && name !== 'groups') rows(items, `${key}[].`, out, long);
  }
  return out;
}

function table(list: Row[]): string {
  const lines = ['| Key | Type | Default | Description |', '| --- | --- | --- | --- |'];
  for (const r of list) lines.push(`| ${code(r.key)} | ${cell(r.type)} | ${r.default} | ${cell(r.description)} |`);
  return lines.join('\n');
}

function section(title: string, description: string | undefined, s: JsonSchema, prefix: string): string {
  const long: { key: string; value: unknown }[] = [];
  const list = rows(s, prefix, [], long);
  const parts = [`## ${title}`, ''];
  if (description) parts.push(`${description}.`, '');
  parts.push(table(list));
  for (const l of long) parts.push('', `Default of ${code(l.key)}:`, '', '```json', JSON.stringify(l.value, null, 2), '```');
  return parts.join('\n');
}

/** docs/reference/config.md */
export function configReferencePage(): string {
  const schema = configJsonSchema() as JsonSchema;
  const props = schema.properties!;
  const scalars: JsonSchema = { properties: {}, required: schema.required };
  const out: string[] = [
    '# Configuration reference',
    '',
    '<!-- Generated from src/config/schemas.ts by `npm run docs`; do not edit. -->',
    '',
    'The config file is YAML (`vmpool --config FILE`, or `VMPOOL_CONFIG=FILE`). Every key is optional: a missing',
    'key takes its default. An unknown key is an error. Times are in seconds.',
    '`vmpool config init` writes a commented file with every key at its value, and `vmpool config check FILE`',
    'validates one. The environment overrides some keys: `REDIS_URL` (redis.url), `VMPOOL_PREFIX`',
    '(redis.prefix), `PORT` and `HOST` (web.port, web.host), `<TYPE>_CONCURRENCY` (concurrency.*).',
    '',
    'The JSON Schema of the file is `schema/vmpool.config.schema.json` in the package (`vmpool config schema`',
    'prints it); the first line that `vmpool config init` writes points editors at it.',
    '',
  ];
  const objectKeys: string[] = [];
  for (const [name, s] of Object.entries(props)) {
    if (s.properties || s.items?.properties) objectKeys.push(name);
    else scalars.properties![name] = s;
  }
  out.push(section('Top level', undefined, scalars, ''));
  for (const name of objectKeys) {
    const s = props[name]!;
    if (name !== 'groups') {
      out.push('', section(`\`${name}\``, s.description, s, `${name}.`));
      continue;
    }
    // Groups: the group's keys, then one table per provider and per check type.
    const group = s.items!;
    out.push('', section('`groups[]`', s.description, group, 'groups[].'));
    if (s.default !== undefined) out.push('', 'Default of `groups`:', '', '```json', JSON.stringify(s.default, null, 2), '```');
    for (const key of ['provider', 'check']) {
      const union = group.properties![key]!;
      for (const v of variantsOf(union) ?? []) {
        out.push('', section(`\`groups[].${key}\`, type \`${v.name}\``, v.schema.description, v.schema, `groups[].${key}.`).replace(/^## /, '### '));
      }
    }
  }
  return `${out.join('\n')}\n`;
}
