import { spawnSync } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { SKIPPED_FILE, type SkippedGroup } from './skippedTools.setup.js';

// The optional system tools some tests run (Redis itself is not optional: the Quick start needs it).
// A group of tests that needs a missing tool is skipped, and named in the list printed at the end of
// the run (skippedTools.setup.ts); under CI it fails instead, so CI never passes by skipping.

interface ToolSpec {
  /** The Debian package that provides it (.ci/run installs each). */
  package: string;
  /** What to run to prove it can be executed. */
  command: string;
  args: string[];
  /** Any exit status proves it runs (for tools without a version flag). */
  anyStatus?: boolean;
  /** Works only as root (network namespaces). */
  root?: boolean;
}

export const TOOLS = {
  sshd: { package: 'openssh-server', command: process.env.SSHD ?? '/usr/sbin/sshd', args: ['-V'] },
  'ssh-keygen': { package: 'openssh-client', command: 'ssh-keygen', args: ['-?'], anyStatus: true },
  'ip netns': { package: 'iproute2', command: 'ip', args: ['netns', 'list'], root: true },
  chromium: { package: 'chromium', command: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium', args: ['--version'] },
  promtool: { package: 'prometheus', command: 'promtool', args: ['--version'] },
  foreman: { package: 'ruby-foreman', command: 'foreman', args: ['version'] },
  'redis-sentinel': { package: 'redis-sentinel', command: 'redis-sentinel', args: ['--version'] },
} as const satisfies Record<string, ToolSpec>;

export type Tool = keyof typeof TOOLS;

/** CI=true (any value but false/0) or VMPOOL_TEST_STRICT=1: a missing tool fails the run. */
export function strictTools(): boolean {
  const ci = process.env.CI;
  return (ci !== undefined && ci !== '' && ci !== 'false' && ci !== '0') || process.env.VMPOOL_TEST_STRICT === '1';
}

const ROOT = resolve(import.meta.dirname, '..', '..');
const problems = new Map<Tool, string | null>();

/** Why the tool cannot be used here, or null when it runs. Checked once per test file. */
export function toolProblem(tool: Tool): string | null {
  if (!problems.has(tool)) problems.set(tool, check(TOOLS[tool]));
  return problems.get(tool)!;
}

function check(spec: ToolSpec): string | null {
  if (spec.root && process.getuid?.() !== 0) return 'needs root';
  const run = spawnSync(spec.command, spec.args, { stdio: 'ignore', timeout: 20_000 });
  const shown = [spec.command, ...spec.args].join(' ');
  if (run.error) return `\`${shown}\` failed: ${(run.error as NodeJS.ErrnoException).code ?? run.error.message}`;
  if (run.status === null) return `\`${shown}\` ended by ${run.signal}`;
  if (!spec.anyStatus && run.status !== 0) return `\`${shown}\` exited with ${run.status}`;
  return null;
}

/** The test file that is being collected, relative to the repo (from the stack: vitest does not say). */
function callerFile(): string {
  const frame = new Error().stack?.split('\n').find((l) => /\.test\.ts:\d+/.test(l));
  const path = frame?.match(/(?:file:\/\/)?(\/[^\s():]+\.test\.ts)/)?.[1];
  return path ? relative(ROOT, path) : 'unknown file';
}

/**
 * describe() for a group of tests that needs system tools: runs it when each tool can be executed;
 * else skips it (its hooks never start anything) and records it for the list at the end of the run,
 * or, under CI=true or VMPOOL_TEST_STRICT=1, replaces it with one failing test that names the tools.
 */
export function describeWithTools(tools: Tool | Tool[], name: string, fn: () => void): void {
  const missing = (Array.isArray(tools) ? tools : [tools]).flatMap((tool) => {
    const problem = toolProblem(tool);
    return problem === null ? [] : [{ tool, package: TOOLS[tool].package, problem }];
  });
  describeWithPrerequisites(missing, name, fn);
}

/** What a group of tests lacks: a tool (or another prerequisite), where it comes from, and why it cannot be used. */
export interface Missing {
  tool: string;
  package: string;
  problem: string;
}

/**
 * describe() for a group of tests that needs what `missing` lists (nothing: it runs): skipped and
 * listed at the end of the run, or under CI=true or VMPOOL_TEST_STRICT=1 one failing test.
 */
export function describeWithPrerequisites(missing: readonly Missing[], name: string, fn: () => void): void {
  if (missing.length === 0) {
    describe(name, fn);
    return;
  }
  const needs = missing.map((m) => `${m.tool} (Debian package ${m.package}: ${m.problem})`).join(', ');
  if (strictTools()) {
    describe(name, () => {
      it(`has its system tools: ${missing.map((m) => m.tool).join(', ')}`, () => {
        expect.fail(`missing tool ${needs}; CI must not pass by skipping (CI or VMPOOL_TEST_STRICT=1 is set). Install it, or run \`bash .ci/run\`.`);
      });
    });
    return;
  }
  const dir = inject('skippedToolsDir');
  const record: SkippedGroup = { file: callerFile(), group: name, tools: [...missing] };
  if (dir) appendFileSync(join(dir, SKIPPED_FILE), `${JSON.stringify(record)}\n`);
  describe.skip(`${name} (skipped: needs ${needs})`, fn);
}
