import { defineConfig } from 'vitest/config';

/**
 * Four tiers. Unit tests need no system service; integration tests start
 * private buses and the real portals; hostile tests attack the daemon by hand
 * as a compromised guest would, past the guest backend's own checks; e2e tests
 * boot QEMU guests. The slow tiers run one file at a time: this machine has
 * two cores. Wherever a test starts our host daemon, it runs as an ordinary
 * user: scripts/test.mjs runs the integration and hostile tiers as the test
 * user (all but `*.as-root.test.ts`: the privileged helper's, and those
 * whose test machinery needs root; none runs the daemon as root); the e2e
 * tier stays root for its guests' machinery, and World runs the host session
 * as that user.
 */
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['src/**/*.test.ts', 'portals/**/*.test.ts', 'test/unit/**/*.test.ts'],
          testTimeout: 10_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          testTimeout: 60_000,
          hookTimeout: 60_000,
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'hostile',
          include: ['test/hostile/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 60_000,
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
