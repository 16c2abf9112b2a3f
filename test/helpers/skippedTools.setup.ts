import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

// Global setup of `npm test` (vitest.config.ts): gives the test files a dir where test/helpers/tools.ts
// records each group it skipped for a missing system tool, and prints them as one list at the end.
declare module 'vitest' {
  export interface ProvidedContext {
    skippedToolsDir: string;
  }
}

/** One line per skipped group, appended by the test files (O_APPEND: concurrent forks do not mix lines). */
export const SKIPPED_FILE = 'skipped.ndjson';

export interface SkippedGroup {
  file: string;
  group: string;
  tools: { tool: string; package: string; problem: string }[];
}

export default function setup(project: TestProject) {
  const dir = mkdtempSync(join(tmpdir(), 'vmpool-skipped-tools-'));
  project.provide('skippedToolsDir', dir);
  return () => {
    const file = join(dir, SKIPPED_FILE);
    const groups: SkippedGroup[] = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as SkippedGroup) : [];
    rmSync(dir, { recursive: true, force: true });
    if (groups.length === 0) return;
    groups.sort((a, b) => a.file.localeCompare(b.file) || a.group.localeCompare(b.group));
    const lines = groups.map((g) => `  ${g.file} > ${g.group}: needs ${g.tools.map((t) => `${t.tool} (Debian package ${t.package})`).join(', ')}`);
    const packages = [...new Set(groups.flatMap((g) => g.tools.map((t) => t.package)))].sort();
    process.stdout.write(
      `\nSkipped for missing system tools (${groups.length} group${groups.length === 1 ? '' : 's'}); ` +
        `install them with \`apt-get install ${packages.join(' ')}\` or \`bash .ci/run\`:\n${lines.join('\n')}\n\n`,
    );
  };
}
