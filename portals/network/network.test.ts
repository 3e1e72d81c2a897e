import { describe, expect, it } from 'vitest';
import { Network } from '../../src/config/schema.js';
import { macFor } from './mac.js';
import { passtArgs, passtFiles } from './passt.js';
import { joinQuestion } from './question.js';
import { NetworkChanged, NetworkJoin, NetworkLeave, NetworkList } from './schema.js';
import { NETWORK } from './index.js';

describe('a NIC\'s MAC', () => {
  it('is stable, unicast, locally administered, and differs per VM and per network', () => {
    const mac = macFor('work', 'web');
    expect(mac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    expect(macFor('work', 'web')).toBe(mac);
    const first = parseInt(mac.slice(0, 2), 16);
    expect(first & 0x02).toBe(0x02);
    expect(first & 0x01).toBe(0);
    const all = new Set([mac, macFor('shop', 'web'), macFor('work', 'dev'), macFor('shop', 'dev'), macFor('workw', 'eb')]);
    expect(all.size).toBe(5);
    for (let i = 0; i < 200; i++) {
      const b = parseInt(macFor(`vm${i}`, 'web').slice(0, 2), 16);
      expect(b & 0x03, `vm${i}`).toBe(0x02);
    }
  });
});

describe('passt', () => {
  const files = passtFiles('/run/user/1000/xdp-vm', '/home/u/.local/state/xdp-vm', 'work', 'web');

  it('runs in the foreground, quits with its one VM, and forwards only from 127.0.0.1, tcp only', () => {
    expect(files.socket).toBe('/run/user/1000/xdp-vm/work-net-web.sock');
    const args = passtArgs(files, [{ host: 2222, guest: 22, protocol: 'tcp' }, { host: 8080, guest: 80, protocol: 'tcp' }]);
    expect(args).toEqual(expect.arrayContaining(['--foreground', '--one-off']));
    expect(args.slice(args.indexOf('--socket'), args.indexOf('--socket') + 2)).toEqual(['--socket', files.socket]);
    expect(args.slice(args.indexOf('--pid'), args.indexOf('--pid') + 2)).toEqual(['--pid', files.pidFile]);
    expect(args.filter((_, i) => args[i - 1] === '-t')).toEqual(['127.0.0.1/2222:22', '127.0.0.1/8080:80']);
    expect(args.slice(-2)).toEqual(['-u', 'none']);
  });

  it('forwards nothing when the network has no forwards', () => {
    const args = passtArgs(files, []);
    expect(args.filter((_, i) => args[i - 1] === '-t')).toEqual(['none']);
  });
});

describe('the consent question', () => {
  it('names the VM and the network in plain words, and says what it reaches', () => {
    const net = Network.parse({ type: 'user', forwards: [{ host: 2222, guest: 22 }] });
    const q = joinQuestion('Work', 'web', net);
    expect(q.summary).toBe("Work wants to join the network 'web' (user-mode: outbound only, through the host's own connection)");
    expect(q.details.find((d) => d.label === 'Reachable from')!.value).toBe('only this computer, on port 2222 → its port 22');
    expect(q.details.find((d) => d.label === 'Reaches')!.value).toMatch(/loopback/);
  });
});

describe('the Network protocol', () => {
  it('carries only names the config allows, and MACs in one spelling', () => {
    expect(NetworkJoin.params.safeParse({ network: 'web' }).success).toBe(true);
    for (const network of ['Web', '../x', '', 'a'.repeat(16), 'web\n']) expect(NetworkJoin.params.safeParse({ network }).success, network).toBe(false);
    expect(NetworkJoin.params.safeParse({ network: 'web', extra: 1 }).success).toBe(false);
    expect(NetworkJoin.result.safeParse({ network: 'web', mac: '02:00:00:00:00:01' }).success).toBe(true);
    expect(NetworkJoin.result.safeParse({ network: 'web', mac: '02:00:00:00:00:0G' }).success).toBe(false);
    expect(NetworkJoin.result.safeParse({ response: 2, results: {} }).success).toBe(true);
    expect(NetworkLeave.result.safeParse({ left: true }).success).toBe(true);
    expect(NetworkList.result.safeParse({ networks: [{ name: 'web', type: 'user', description: 'x', joined: false }] }).success).toBe(true);
    expect(NetworkList.result.safeParse({ networks: [{ name: 'web', type: 'wifi', description: 'x', joined: false }] }).success).toBe(false);
    expect(NetworkChanged.params.safeParse({ network: 'web', joined: true, mac: '02:00:00:00:00:01' }).success).toBe(true);
    for (const m of NETWORK.methods) expect(m.name).toMatch(/^[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)+$/);
  });

  it('policy rows name a network as the config does', () => {
    expect(NETWORK.policy.argument.safeParse('web').success).toBe(true);
    expect(NETWORK.policy.argument.safeParse('br0.100').success).toBe(false);
  });
});
