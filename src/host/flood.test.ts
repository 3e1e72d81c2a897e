import { describe, expect, it } from 'vitest';
import type { AuditEntry } from './audit.js';
import { FloodControl, REFUSED } from './flood.js';

function setup(limits = { maxPending: 2, maxRecent: 5, windowSeconds: 60 }, quietMs = 60_000) {
  let now = 1_000_000;
  const lines: AuditEntry[] = [];
  let n = 0;
  const flood = new FloodControl({ limits, quietMs, now: () => now, audit: (e) => lines.push(e) });
  const id = () => `r${++n}`;
  return { flood, lines, id, advance: (ms: number) => (now += ms) };
}

describe('flood control', () => {
  it('refuses a VM past its pending limit, and admits it again once one is answered', () => {
    const { flood, id } = setup();
    const a = flood.admit('work', 'FileChooser', id);
    const b = flood.admit('work', 'FileChooser', id);
    expect(a && b).toBeTruthy();
    expect(flood.admit('work', 'FileChooser', id)).toBeUndefined();
    a!.done();
    a!.done(); // answering twice frees one slot, not two
    expect(flood.admit('work', 'FileChooser', id)).toBeDefined();
    expect(flood.admit('work', 'FileChooser', id)).toBeUndefined();
  });

  it('refuses past the window limit, and admits again when the window slides', () => {
    const { flood, id, advance } = setup({ maxPending: 100, maxRecent: 3, windowSeconds: 10 });
    for (let i = 0; i < 3; i++) {
      flood.admit('work', 'FileChooser', id)!.done();
      advance(2000);
    }
    expect(flood.admit('work', 'FileChooser', id)).toBeUndefined();
    advance(4001); // the first admission is now more than 10 s old
    expect(flood.admit('work', 'FileChooser', id)).toBeDefined();
    expect(flood.admit('work', 'FileChooser', id)).toBeUndefined();
  });

  it('leaves other VMs alone', () => {
    const { flood, id } = setup({ maxPending: 1, maxRecent: 5, windowSeconds: 60 });
    flood.admit('work', 'FileChooser', id);
    for (let i = 0; i < 50; i++) expect(flood.admit('work', 'FileChooser', id)).toBeUndefined();
    expect(flood.admit('shop', 'FileChooser', id)).toBeDefined();
  });

  it('audits a burst once at its start and once, with the count, at its end', () => {
    const { flood, lines, id } = setup({ maxPending: 1, maxRecent: 100, windowSeconds: 60 });
    const first = flood.admit('work', 'FileChooser', id)!;
    for (let i = 0; i < 1000; i++) flood.admit('work', 'FileChooser', id);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ vm: 'work', portal: 'FileChooser', decision: 'deny', reason: 'flood', grant: null, flood: { phase: 'start', refused: 1 } });
    first.done();
    flood.admit('work', 'FileChooser', id);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ vm: 'work', decision: 'deny', reason: 'flood', request: lines[0]!.request, flood: { phase: 'end', refused: 1000 } });
  });

  it('ends a burst after a quiet spell even if the VM sends nothing more', async () => {
    const { flood, lines, id } = setup({ maxPending: 1, maxRecent: 100, windowSeconds: 60 }, 30);
    flood.admit('work', 'FileChooser', id);
    flood.admit('work', 'FileChooser', id);
    flood.admit('work', 'FileChooser', id);
    await new Promise((r) => setTimeout(r, 120));
    expect(lines.map((l) => l.flood)).toEqual([
      { phase: 'start', refused: 1 },
      { phase: 'end', refused: 2 },
    ]);
  });

  it('writes the summary of an open burst when closed', () => {
    const { flood, lines, id } = setup({ maxPending: 1, maxRecent: 100, windowSeconds: 60 });
    flood.admit('work', 'FileChooser', id);
    flood.admit('work', 'FileChooser', id);
    flood.close();
    expect(lines.at(-1)).toMatchObject({ flood: { phase: 'end', refused: 1 } });
  });

  it('guards a handler: a refused request gets response 2 and the handler never runs', async () => {
    const { flood, id } = setup({ maxPending: 1, maxRecent: 100, windowSeconds: 60 });
    let release!: () => void;
    let runs = 0;
    const handler = flood.guard('work', 'FileChooser', async () => {
      runs++;
      await new Promise<void>((r) => (release = r));
      return { response: 0, results: {} };
    }, id);
    const ctx = { signal: new AbortController().signal, requestId: 1 };
    const first = handler({}, ctx);
    expect(await handler({}, ctx)).toEqual(REFUSED);
    expect(runs).toBe(1);
    release();
    expect(await first).toEqual({ response: 0, results: {} });
    expect(flood.pending('work')).toBe(0);
  });

  it('frees the slot when a handler throws', async () => {
    const { flood, id } = setup({ maxPending: 1, maxRecent: 100, windowSeconds: 60 });
    const handler = flood.guard('work', 'FileChooser', async () => {
      throw new Error('boom');
    }, id);
    await expect(handler({}, { signal: new AbortController().signal, requestId: 1 })).rejects.toThrow('boom');
    expect(flood.pending('work')).toBe(0);
  });
});
