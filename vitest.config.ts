import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Lists, at the end, the groups skipped for a missing system tool (test/helpers/tools.ts).
    globalSetup: ['test/helpers/skippedTools.setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests start real processes and servers; two cores do not gain from many forks.
    maxWorkers: 2,
  },
});
