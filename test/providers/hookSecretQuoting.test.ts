import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/logger.js';
import type { CommandProvider } from '../../src/providers/command.js';
import { createProvider } from '../../src/providers/index.js';
import type { ProviderGroup } from '../../src/providers/types.js';

// A failure message quotes the hook's output JSON-escaped and cut: a secret with a quote or a
// backslash in it (a Redis password may have both), or one that the cut splits, is still masked.
const SECRET = 'pa"ss\\word-0f9e8d7c6b5a';

function provider(p: Record<string, unknown>): { provider: CommandProvider; group: ProviderGroup } {
  const config = parseConfig({ groups: [{ name: 'g', provider: { type: 'command', kill_grace: 0.2, ...p }, check: { type: 'tcp', port: 22 } }] }, {});
  const group: ProviderGroup = { index: 0, config: config.groups[0]! };
  return { provider: createProvider(group, { logger: createLogger('test'), secrets: [SECRET] }) as CommandProvider, group };
}

async function failure(run: () => Promise<unknown>): Promise<string> {
  try {
    await run();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('it did not fail');
}

/** Neither the secret nor any 6-character piece of it. */
function expectMasked(message: string): void {
  expect(message).toMatch(/\*\*\*/);
  for (let i = 0; i + 6 <= SECRET.length; i++) expect(message, message).not.toContain(SECRET.slice(i, i + 6));
}

describe('secrets in quoted hook output', () => {
  it('list: a bad line that holds the secret', async () => {
    const { provider: p, group } = provider({ spawn_cmd: '/bin/true', terminate_cmd: '/bin/true', list_cmd: ['/bin/echo', `${SECRET} 10.0.0.1 not-a-date`] });
    expectMasked(await failure(() => p.list!(group)));
  });

  it('spawn: a last line that holds the secret', async () => {
    const { provider: p, group } = provider({ spawn_cmd: ['/bin/echo', `{"name": 5, "note": ${JSON.stringify(SECRET)}}`], terminate_cmd: '/bin/true' });
    expectMasked(await failure(() => p.spawn({ group, spawnId: 's1' })));
  });

  it('spawn: a typed failure whose message holds the secret past its cut', async () => {
    const message = `${'x'.repeat(290)} ${SECRET}`;
    const { provider: p, group } = provider({ spawn_cmd: ['/bin/sh', '-c', 'printf "%s\\n" "$0"; exit 1', JSON.stringify({ error: 'quota', message })], terminate_cmd: '/bin/true' });
    expectMasked(await failure(() => p.spawn({ group, spawnId: 's2' })));
  });
});
