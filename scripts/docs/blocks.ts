/**
 * Generated blocks in hand-written pages: the text between
 *   <!-- generated:NAME start -->  and  <!-- generated:NAME end -->
 * belongs to a generator; everything around it is prose.
 */

export interface DocGenerator {
  /** The page, relative to the repository root. */
  page: string;
  /** The page's text once generated, from its current text (null when the file does not exist). */
  render(current: string | null): string | Promise<string>;
}

const marker = (name: string, end: 'start' | 'end') => `<!-- generated:${name} ${end} -->`;

function bounds(text: string, name: string): { from: number; to: number } {
  const start = marker(name, 'start');
  const end = marker(name, 'end');
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  if (from < 0 || to < 0 || to < from) throw new Error(`no "${start}" ... "${end}" block`);
  if (text.indexOf(start, from + 1) >= 0) throw new Error(`two "${start}" markers`);
  return { from: from + start.length, to };
}

/** The text between the block's markers, without the blank lines next to them. */
export function generatedBlock(text: string, name: string): string {
  const { from, to } = bounds(text, name);
  return text.slice(from, to).replace(/^\n+|\n+$/g, '');
}

/** The text with the block's content replaced (markers kept, a blank line inside each). */
export function replaceGeneratedBlock(text: string, name: string, content: string): string {
  const { from, to } = bounds(text, name);
  return `${text.slice(0, from)}\n\n${content.replace(/^\n+|\n+$/g, '')}\n\n${text.slice(to)}`;
}
