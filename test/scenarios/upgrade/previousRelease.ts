import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../../helpers/processes.js';
import type { Missing } from '../../helpers/tools.js';

// The previous release of vmpool for the upgrade test: a commit of this repository's own history,
// named in the file `previous-release` beside this one (a release bumps it: test/README.md), checked
// out of a local clone of this repository into a temp dir, its packages installed, built.

/** The file that names the previous release's commit (its full hash). */
export const PREVIOUS_RELEASE_FILE = join(import.meta.dirname, 'previous-release');

/** The previous release's commit, from PREVIOUS_RELEASE_FILE. */
export function previousReleaseCommit(): string {
  const commit = readFileSync(PREVIOUS_RELEASE_FILE, 'utf8').trim();
  if (!/^[0-9a-f]{40}$/.test(commit)) throw new Error(`${PREVIOUS_RELEASE_FILE} must hold one full commit hash (40 hex digits), not ${JSON.stringify(commit)}`);
  return commit;
}

/** Why the previous release cannot be checked out here (no git, no history: a shallow clone), or null. */
export function previousReleaseMissing(commit: string): Missing[] {
  const run = spawnSync('git', ['-C', ROOT, 'cat-file', '-e', `${commit}^{commit}`], { stdio: 'ignore', timeout: 20_000 });
  if (run.error) return [{ tool: 'git', package: 'git', problem: `\`git\` failed: ${(run.error as NodeJS.ErrnoException).code ?? run.error.message}` }];
  if (run.status === 0) return [];
  const shallow = existsSync(join(ROOT, '.git', 'shallow')) || spawnSync('git', ['-C', ROOT, 'rev-parse', '--is-shallow-repository'], { encoding: 'utf8' }).stdout?.trim() === 'true';
  return [
    {
      tool: 'git history',
      package: 'git',
      problem: `the previous release ${commit.slice(0, 12)} (${PREVIOUS_RELEASE_FILE}) is not in this checkout's history${shallow ? ' (a shallow clone: git fetch --unshallow)' : ''}`,
    },
  ];
}

export interface PreviousRelease {
  commit: string;
  /** Its checkout, built: `dist/workers/<type>.js`, `dist/src/client/index.js`. */
  root: string;
  /** How its packages came: this checkout's node_modules (the same package-lock.json), or `npm ci`. */
  installed: 'linked' | 'npm ci';
  /** Seconds spent cloning, installing and building. */
  preparedIn: number;
  remove(): void;
}

const run = (command: string, args: string[], cwd: string, timeoutMs: number) => execFileSync(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, encoding: 'utf8' });

/**
 * Checks the previous release out of a local clone of this repository (sharing its objects, so the
 * commit need not be on a branch), installs its packages (a link to this checkout's node_modules
 * when package-lock.json is the same, else `npm ci --prefer-offline`) and builds it.
 */
export function preparePreviousRelease(commit: string): PreviousRelease {
  const started = Date.now();
  const root = mkdtempSync(join(tmpdir(), 'vmpool-previous-release-'));
  const remove = () => rmSync(root, { recursive: true, force: true });
  try {
    run('git', ['clone', '--quiet', '--no-checkout', '--shared', ROOT, root], ROOT, 60_000);
    run('git', ['-c', 'advice.detachedHead=false', 'checkout', '--quiet', commit], root, 60_000);
    const sameLock = readFileSync(join(root, 'package-lock.json'), 'utf8') === readFileSync(join(ROOT, 'package-lock.json'), 'utf8');
    if (sameLock) symlinkSync(realpathSync(join(ROOT, 'node_modules')), join(root, 'node_modules'), 'dir');
    else run('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], root, 600_000);
    run('npm', ['run', 'build'], root, 300_000);
    return { commit, root, installed: sameLock ? 'linked' : 'npm ci', preparedIn: (Date.now() - started) / 1000, remove };
  } catch (err) {
    remove();
    const e = err as Error & { stdout?: string; stderr?: string };
    throw new Error(`preparing the previous release ${commit} failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
}
