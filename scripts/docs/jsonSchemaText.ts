// Shared by the reference page generators: how a JSON Schema node reads in a Markdown table.

export type JsonSchema = {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  additionalProperties?: boolean | JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  not?: JsonSchema;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  maxItems?: number;
  pattern?: string;
  format?: string;
  $ref?: string;
};

/** Text for a Markdown table cell: one line, pipes escaped. */
export function cell(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').replace(/\|/g, '\\|');
}

/** Inline code, safe in a table cell. */
export function code(text: string): string {
  return `\`${text.replace(/\|/g, '\\|')}\``;
}

const UNBOUNDED = Number.MAX_SAFE_INTEGER;

/** A schema's type in a few words: `integer ≥ 0`, `"a" | "b"`, `string[]`, `Vm`. */
export function typeText(s: JsonSchema): string {
  if (s.$ref) return s.$ref.split('/').pop()!;
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  const variants = s.anyOf ?? s.oneOf;
  if (variants) return variants.map(typeText).join(' or ');
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  const base = types.filter((t) => t !== 'null');
  const nullable = types.includes('null') ? ' or null' : '';
  const t = base.length === 1 ? base[0]! : base.join(' or ') || 'any';
  if (t === 'array') return `${s.items ? wrap(typeText(s.items)) : 'any'}[]${bounds(s.minItems, s.maxItems, 'items')}${nullable}`;
  if (t === 'object' && !s.properties && typeof s.additionalProperties === 'object') return `map of ${typeText(s.additionalProperties)}${nullable}`;
  if (t === 'number' || t === 'integer') return `${t}${numberBounds(s)}${nullable}`;
  if (t === 'string') return `string${s.format ? ` (${s.format})` : ''}${bounds(s.minLength, s.maxLength, 'chars')}${nullable}`;
  return `${t}${nullable}`;
}

function wrap(text: string): string {
  return /\s/.test(text) ? `(${text})` : text;
}

function numberBounds(s: JsonSchema): string {
  const low = s.exclusiveMinimum !== undefined ? `> ${s.exclusiveMinimum}` : s.minimum !== undefined && s.minimum > -UNBOUNDED ? `≥ ${s.minimum}` : '';
  const high = s.maximum !== undefined && s.maximum < UNBOUNDED ? `≤ ${s.maximum}` : '';
  return [low, high].filter(Boolean).length ? ` ${[low, high].filter(Boolean).join(', ')}` : '';
}

function bounds(min: number | undefined, max: number | undefined, unit: string): string {
  if (min !== undefined && max !== undefined) return ` (${min}–${max} ${unit})`;
  if (min === 1 && unit === 'chars') return ', non-empty';
  if (min !== undefined && min > 0) return ` (at least ${min} ${min === 1 ? unit.replace(/s$/, '') : unit})`;
  if (max !== undefined) return ` (at most ${max} ${unit})`;
  return '';
}
