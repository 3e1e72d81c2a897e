import { describe, expect, it } from 'vitest';
import { plainSocketAddress } from './bus.js';

describe('a D-Bus address for a connection that passes no descriptors', () => {
  it('names a plain socket for unix paths and abstract names, and leaves everything else as it is', () => {
    expect(plainSocketAddress('unix:path=/run/user/1000/bus')).toBe('unix:socket=/run/user/1000/bus');
    expect(plainSocketAddress('unix:path=/tmp/b,guid=0123')).toBe('unix:socket=/tmp/b');
    expect(plainSocketAddress('unix:abstract=/tmp/dbus-x')).toBe('unix:socket=\0/tmp/dbus-x');
    expect(plainSocketAddress('tcp:host=localhost,port=1')).toBe('tcp:host=localhost,port=1');
    expect(plainSocketAddress('unix:path=/a;unix:path=/b')).toBe('unix:socket=/a;unix:socket=/b');
    expect(plainSocketAddress('unix:tmpdir=/tmp')).toBe('unix:tmpdir=/tmp');
  });
});
