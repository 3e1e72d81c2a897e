import { describe, expect, it } from 'vitest';
import { cachedHelperProblem } from './client.js';

describe('cachedHelperProblem', () => {
  it('asks the system bus once for any number of callers at once or in a row, and again once the answer is older than its time', async () => {
    let probes = 0;
    const answers = ['the privileged helper is not installed on this host (README: "The privileged helper")', undefined];
    const probe = cachedHelperProblem(50, async () => answers[probes++]);
    const burst = await Promise.all(Array.from({ length: 100 }, () => probe()));
    expect(probes).toBe(1);
    expect(new Set(burst)).toEqual(new Set([answers[0]]));
    expect(await probe()).toBe(answers[0]);
    expect(probes).toBe(1);
    await new Promise((r) => setTimeout(r, 60));
    expect(await probe()).toBeUndefined();
    expect(probes).toBe(2);
  });
});
