import { defineConfig } from 'vitest/config';

// `npm run test:chaos`: the chaos scenarios of test/scenarios/chaos only (they are part of `npm test` too),
// with a summary table of their figures at the end. CHAOS_SCALE=N makes each run N times longer.
export default defineConfig({
  test: {
    include: ['test/scenarios/chaos/**/*.test.ts'],
    globalSetup: ['test/scenarios/chaos/summary.setup.ts'],
    testTimeout: 600_000,
    hookTimeout: 120_000,
    // Each scenario starts its own redis-server and worker processes; two cores run one at a time best.
    maxWorkers: 1,
  },
});
