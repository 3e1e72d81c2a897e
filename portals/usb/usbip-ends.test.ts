import { describe, expect, it } from 'vitest';
import { VsockPorts } from './usbip-ends.js';

describe('VsockPorts', () => {
  it('hands each VM reserved ports from 512 up, never one in use, and moves on after each so a port held in the VM fails one attach only', () => {
    const ports = new VsockPorts();
    const a = ports.take('work');
    const b = ports.take('work');
    expect([a, b]).toEqual([512, 513]);
    expect(ports.take('shop')).toBe(512);
    ports.give('work', a);
    // Given back, 512 is not handed out again at once: the next attach tries another port.
    expect(ports.take('work')).toBe(514);
  });

  it('wraps round the range, skipping ports in use, and says so when a VM has them all', () => {
    const ports = new VsockPorts();
    const taken = Array.from({ length: 512 }, () => ports.take('work'));
    expect(new Set(taken).size).toBe(512);
    expect(Math.min(...taken)).toBe(512);
    expect(Math.max(...taken)).toBe(1023);
    expect(() => ports.take('work')).toThrow('VM "work" has 512 USB/IP streams already, which is as many as it can have');
    ports.give('work', 700);
    expect(ports.take('work')).toBe(700);
  });
});
