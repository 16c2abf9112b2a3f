import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { wantsPrettyLogs } from '../src/logger.js';
import { ROOT } from './helpers/processes.js';

describe('log format', () => {
  it('is human-readable on a terminal and NDJSON otherwise, unless VMPOOL_LOG_PRETTY says', () => {
    expect(wantsPrettyLogs({}, true)).toBe(true);
    expect(wantsPrettyLogs({}, false)).toBe(false);
    expect(wantsPrettyLogs({ VMPOOL_LOG_PRETTY: '0' }, true)).toBe(false);
    expect(wantsPrettyLogs({ VMPOOL_LOG_PRETTY: '1' }, false)).toBe(true);
    expect(wantsPrettyLogs({ NODE_ENV: 'development' }, false)).toBe(true);
  });

  // A real process writing to a pipe: what `npm start > file` or a process manager gets.
  const logLine = (env: NodeJS.ProcessEnv) => {
    const code = "const { createLogger } = await import('./src/logger.ts'); createLogger('demo').info({ vm: 'vm-1' }, 'hello'); process.exit(0);";
    const { stdout, status } = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
      encoding: 'utf8',
    });
    expect(status).toBe(0);
    return stdout.trim();
  };

  it('writes NDJSON to a pipe, and pretty lines when asked, with nothing lost at exit', () => {
    const json = JSON.parse(logLine({}));
    expect(json).toMatchObject({ level: 30, name: 'demo', vm: 'vm-1', msg: 'hello' });
    const pretty = logLine({ VMPOOL_LOG_PRETTY: '1' });
    expect(pretty).toMatch(/INFO \(demo\): hello/);
    expect(pretty).toContain('vm: "vm-1"');
    expect(() => JSON.parse(pretty)).toThrow();
  });
});
