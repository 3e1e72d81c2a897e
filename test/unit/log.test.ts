import { describe, expect, it } from 'vitest';
import { errForLog } from '../../src/log.js';

describe('how an error is logged', () => {
  it('a failure of the guest\'s making: its message cleaned and capped, no stack trace', () => {
    class PortalError extends Error {
      override name = 'PortalError';
    }
    const err = Object.assign(new PortalError(`invalid options: \u202e${'\u001b[2J'.repeat(2000)}`), { code: 'EINVAL' });
    const shown = errForLog(err) as Record<string, unknown>;
    expect(shown).toEqual({ type: 'PortalError', code: 'EINVAL', message: expect.stringMatching(/^invalid options: \\u\{202e\}\\x1b\[2J/) });
    expect(String(shown.message).length).toBeLessThanOrEqual(1000);
    expect(JSON.stringify(shown)).not.toMatch(/\\u001b|\u202e|stack/);
  });

  it('our own bug says where it was thrown, in one line', () => {
    let err: unknown;
    try {
      (undefined as unknown as { x: () => void }).x();
    } catch (e) {
      err = e;
    }
    const shown = errForLog(err) as Record<string, unknown>;
    expect(shown.type).toBe('TypeError');
    expect(String(shown.at)).toMatch(/^at .*log\.test\.ts:\d+:\d+/);
    expect(shown).not.toHaveProperty('stack');
  });
});
