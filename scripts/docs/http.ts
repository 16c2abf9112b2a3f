// Generates docs/reference/http.md from the OpenAPI document (src/http/openapi.ts). Run
// `npm run docs`; test/docs/generated.test.ts fails when the committed page differs.
import { openApiDocument } from '../../src/http/openapi.js';
import { cell, code, typeText, type JsonSchema } from './jsonSchemaText.js';

interface Parameter {
  name: string;
  in: string;
  required?: boolean;
  description?: string;
  schema: JsonSchema;
}
interface Content {
  description: string;
  content?: Record<string, { schema: JsonSchema }>;
}
interface Operation {
  operationId: string;
  summary: string;
  security?: { bearer: string[] }[];
  parameters?: Parameter[];
  requestBody?: { required?: boolean; content: Record<string, { schema: JsonSchema }> };
  responses: Record<string, Content>;
}
interface Document {
  info: { title: string; description: string };
  servers: { url: string }[];
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, JsonSchema> };
}

/** A schema as text, with named schemas linked to their section. */
function schemaText(s: JsonSchema): string {
  if (s.$ref) {
    const name = s.$ref.split('/').pop()!;
    return `[${name}](#${name.toLowerCase()})`;
  }
  const variants = s.oneOf ?? s.anyOf;
  if (variants && variants.some((v) => v.$ref)) return variants.map(schemaText).join(' or ');
  if (s.type === 'array' && s.items?.$ref) return `${schemaText(s.items)}[]`;
  if (s.type === 'object' && s.properties) {
    return `object: ${Object.entries(s.properties)
      .map(([k, v]) => `${k} (${schemaText(v)})`)
      .join(', ')}`;
  }
  return cell(typeText(s));
}

/** Capitalized, with a full stop. */
function sentence(text: string): string {
  const t = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(t) ? t : `${t}.`;
}

function defaultOf(s: JsonSchema): string {
  return s.default === undefined ? '' : ` (default ${code(JSON.stringify(s.default))})`;
}

function operationSection(method: string, path: string, op: Operation): string {
  const lines = [`### ${method.toUpperCase()} ${path}`, '', sentence(op.summary), ''];
  const scopes = (op.security ?? []).flatMap((s) => s.bearer);
  lines.push(`Operation \`${op.operationId}\`; token scope: ${scopes.length ? scopes.map((s) => `\`${s}\``).join(', ') : 'none'}.`, '');
  if (op.parameters?.length) {
    lines.push('| Parameter | In | Type | Required | Description |', '| --- | --- | --- | --- | --- |');
    for (const p of op.parameters) {
      lines.push(`| \`${p.name}\` | ${p.in} | ${schemaText(p.schema)}${defaultOf(p.schema)} | ${p.required ? 'yes' : 'no'} | ${cell(p.description ?? '')} |`);
    }
    lines.push('');
  }
  if (op.requestBody) {
    const [type, body] = Object.entries(op.requestBody.content)[0]!;
    lines.push(`Request body (${type}, ${op.requestBody.required ? 'required' : 'optional'}): ${schemaText(body.schema)}.`, '');
  }
  lines.push('| Status | Description | Body |', '| --- | --- | --- |');
  for (const [status, r] of Object.entries(op.responses)) {
    const schema = r.content ? Object.values(r.content)[0]?.schema : undefined;
    lines.push(`| ${status} | ${cell(r.description)} | ${schema ? schemaText(schema) : ''} |`);
  }
  return lines.join('\n');
}

function schemaSection(name: string, s: JsonSchema): string {
  const lines = [`### ${name}`, ''];
  if (s.description) lines.push(`${cell(sentence(s.description))}`, '');
  if (!s.properties) {
    lines.push(`Type: ${schemaText({ ...s, description: undefined })}.`);
    return lines.join('\n');
  }
  if (s.additionalProperties === false) lines.push('No other properties are allowed.', '');
  lines.push('| Property | Type | Required | Description |', '| --- | --- | --- | --- |');
  for (const [key, v] of Object.entries(s.properties)) {
    lines.push(`| \`${key}\` | ${schemaText(v)} | ${s.required?.includes(key) ? 'yes' : 'no'} | ${cell(v.description ?? '')} |`);
  }
  return lines.join('\n');
}

/** docs/reference/http.md */
export function httpReferencePage(): string {
  const doc = openApiDocument as unknown as Document;
  const out = [
    '# HTTP API reference',
    '',
    '<!-- Generated from the OpenAPI document (src/http/openapi.ts) by `npm run docs`; do not edit. -->',
    '',
    `${doc.info.description}`,
    '',
    `Every path below is under \`${doc.servers[0]!.url}\`. The web process serves this document as OpenAPI 3.1 at \`${doc.servers[0]!.url}/openapi.json\`.`,
    '',
    '## Operations',
  ];
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) out.push('', operationSection(method, path, op));
  }
  out.push('', '## Schemas');
  for (const [name, s] of Object.entries(doc.components.schemas)) out.push('', schemaSection(name, s));
  return `${out.join('\n')}\n`;
}
