/**
 * Every relative link in README.md, examples/README.md and docs/ points at a file or directory
 * that exists, and every #anchor at a heading of the page it names (GitHub's heading ids).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? markdownFiles(join(dir, e.name)) : e.name.endsWith('.md') ? [join(dir, e.name)] : [],
  );
}

/** The text outside fenced code blocks and inline code spans, line by line (numbers kept). */
function proseLines(text: string): string[] {
  let fenced = false;
  return text.split('\n').map((line) => {
    if (/^\s*(```|~~~)/.test(line)) {
      fenced = !fenced;
      return '';
    }
    return fenced ? '' : line.replace(/`[^`]*`/g, '``');
  });
}

/** GitHub's id for each heading of a page: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
export function headingIds(text: string): Set<string> {
  const ids = new Set<string>();
  const seen = new Map<string, number>();
  let fenced = false;
  for (const line of text.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const m = fenced ? null : /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = m[1]!
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .toLowerCase()
      .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    ids.add(n === 0 ? base : `${base}-${n}`);
  }
  return ids;
}

/** What is wrong with the relative links of one Markdown file, as "file:line: message". */
export function brokenLinks(file: string, text: string): string[] {
  const problems: string[] = [];
  proseLines(text).forEach((line, i) => {
    for (const m of line.matchAll(/\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
      const target = m[1]!;
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
      const [path, anchor] = target.split('#', 2) as [string, string | undefined];
      const at = `${relative(root, file)}:${i + 1}`;
      const dest = path === '' ? file : resolve(dirname(file), decodeURIComponent(path));
      if (path !== '' && !existsSync(dest)) {
        problems.push(`${at}: ${target} (no such file)`);
        continue;
      }
      if (anchor !== undefined && dest.endsWith('.md') && (dest === file || statSync(dest).isFile())) {
        const ids = headingIds(dest === file ? text : readFileSync(dest, 'utf8'));
        if (!ids.has(anchor)) problems.push(`${at}: ${target} (no heading #${anchor} in ${relative(root, dest)})`);
      }
    }
  });
  return problems;
}

const pages = [join(root, 'README.md'), join(root, 'examples', 'README.md'), ...markdownFiles(join(root, 'docs'))];

describe('links in the docs', () => {
  it('covers the README, the examples README and every docs page', () => {
    expect(pages.length).toBeGreaterThan(15);
    for (const p of ['docs/README.md', 'docs/getting-started.md', 'docs/performance.md']) expect(pages).toContain(join(root, p));
  });

  it('point at files and headings that exist', () => {
    const problems = pages.flatMap((file) => brokenLinks(file, readFileSync(file, 'utf8')));
    expect(problems).toEqual([]);
  });

  it('finds a missing file, a missing heading, and ignores code and absolute URLs', () => {
    const file = join(root, 'docs', 'example.md');
    const text = [
      '# A page',
      '## Its `first` part: here',
      '[ok](#a-page) [ok](#its-first-part-here) [ok](README.md#using-it-from-a-build-system) [ok](../examples/)',
      '[gone](nowhere.md) [bad anchor](README.md#nowhere) [self](#missing)',
      '`[code](nowhere.md)` [web](https://example.org/x.md)',
      '```',
      '[fenced](nowhere.md)',
      '```',
    ].join('\n');
    expect(brokenLinks(file, text)).toEqual([
      'docs/example.md:4: nowhere.md (no such file)',
      'docs/example.md:4: README.md#nowhere (no heading #nowhere in docs/README.md)',
      'docs/example.md:4: #missing (no heading #missing in docs/example.md)',
    ]);
  });
});
