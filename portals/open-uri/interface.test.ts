import { describe, expect, it } from 'vitest';
import { loadInterface } from '../../src/dbus/interfaces.js';
import { OPEN_URI_INTERFACE } from './handler.js';

describe('io.github.xdp_vm.OpenUri1', () => {
  it('is the one method the "Open on host" handler calls, and a version', () => {
    const i = loadInterface(OPEN_URI_INTERFACE);
    expect([...i.methods.values()].map((m) => `${m.name}(${m.inSignature})->(${m.outSignature})`)).toEqual(['OpenURI(s)->(ss)']);
    expect(i.properties.get('version')!.type).toBe('u');
  });
});
