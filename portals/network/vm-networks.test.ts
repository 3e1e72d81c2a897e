import { EventEmitter } from 'node:events';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { captureLogger } from '../../test/helpers/log-capture.js';
import { Network, type VmConfig } from '../../src/config/schema.js';
import { configureAudit } from '../../src/host/audit.js';
import type { ConsentAsker } from '../../src/host/consent.js';
import type { VmDevices } from '../../src/host/vm-devices.js';
import type { PolicyDecider } from '../../src/policy/policy.js';
import type { PolicyRow } from '../../src/policy/model.js';
import type { NetSpec } from '../../src/vmm/adapter.js';
import { macFor } from './mac.js';

/**
 * VmNetworks with its edges faked: the device layer (a VMM with the `net`
 * capability that records what it is asked), the policy rows, the consent
 * answer, and passt (never run here). What is asserted is who gets asked,
 * what gets plugged, what is told to the guest and what is audited.
 */
const started: { socket: string; forwards: unknown[] }[] = [];
const stopped: string[] = [];
vi.mock('./passt.js', async (orig) => ({
  ...(await orig<typeof import('./passt.js')>()),
  startPasst: async (files: { socket: string }, forwards: unknown[]) => (started.push({ socket: files.socket, forwards }), { pid: 4242, socket: files.socket }),
  stopPasst: async (h: { socket: string }) => void stopped.push(h.socket),
  findPasst: () => undefined,
}));
const { VmNetworks } = await import('./vm-networks.js');

const networks = {
  web: Network.parse({ type: 'user', forwards: [{ host: 2222, guest: 22 }] }),
  dev: Network.parse({ type: 'user' }),
  lan: Network.parse({ type: 'bridge', bridge: 'br0' }),
};
const vm = { name: 'work', label: 'Work', color: '#000000', tags: [], networks } as unknown as VmConfig;

function setup(opts: { rows?: PolicyRow[]; consent?: boolean; present?: string[] } = {}) {
  const attached: NetSpec[] = [];
  const detached: string[] = [];
  const present = new Set(opts.present ?? []);
  const net = {
    attachNet: async (spec: NetSpec) => (attached.push(spec), present.add(spec.id), { kind: 'net' as const, id: spec.id, deviceId: `xdpvm-net-${spec.id}`, location: 'rp1' }),
    detachNet: async (id: string) => void (detached.push(id), present.delete(id)),
    listNet: async () => [...present].map((id) => ({ kind: 'net' as const, id, deviceId: `xdpvm-net-${id}`, location: 'rp1' })),
  };
  const devices = Object.assign(new EventEmitter(), {
    vmm: { kind: 'qemu', net },
    require: () => net,
  }) as unknown as VmDevices;
  const rows = opts.rows ?? [];
  const policy = {
    decision: async (_portal: string, arg: string | undefined) => {
      const row = rows.find((r) => r.arg === arg) ?? rows.find((r) => r.arg === undefined);
      return row ? { verdict: row.verdict, row } : { verdict: 'ask' as const };
    },
  } as unknown as PolicyDecider;
  const asked: string[] = [];
  const consent: ConsentAsker = async (q) => (asked.push(q.summary), { allowed: opts.consent ?? false, reason: 'user' });
  const told: unknown[] = [];
  let seq = 0;
  const cap = captureLogger();
  configureAudit({ logger: cap.log, file: null });
  const nets = new VmNetworks({ vm, devices, policy, consent, nextRequestId: () => `r${++seq}`, notify: (c) => (told.push(c), true), dirs: { runtime: '/run/x', logs: '/log' }, log: captureLogger().log });
  const audits = () => cap.lines().filter((l) => l.audit === true);
  return { nets, devices, attached, detached, asked, told, audits };
}

beforeEach(() => {
  started.length = 0;
  stopped.length = 0;
});

describe('VmNetworks', () => {
  it('a guest join the user refuses plugs nothing and starts nothing', async () => {
    const t = setup({ consent: false });
    await expect(t.nets.join('web', 'guest')).rejects.toThrow(/the user did not allow this VM to join 'web'/);
    expect(t.asked).toEqual(["Work wants to join the network 'web' (user-mode: outbound only, through the host's own connection)"]);
    expect(t.attached).toEqual([]);
    expect(started).toEqual([]);
  });

  it('a guest join the user allows: passt with the forwards, then the NIC with the stable MAC, and the guest is told', async () => {
    const t = setup({ consent: true });
    const r = await t.nets.join('web', 'guest');
    expect(r).toEqual({ network: 'web', mac: macFor('work', 'web') });
    expect(started).toEqual([{ socket: '/run/x/work-net-web.sock', forwards: [{ host: 2222, guest: 22, protocol: 'tcp' }] }]);
    expect(t.attached).toEqual([{ id: 'web', backend: { type: 'stream', socketPath: '/run/x/work-net-web.sock' }, mac: r.mac }]);
    expect(t.told).toEqual([{ network: 'web', joined: true, mac: r.mac }]);
    expect((await t.nets.list()).find((n) => n.name === 'web')!.joined).toBe(true);
    expect(t.audits().at(-1)).toMatchObject({ vm: 'work', portal: 'Network', decision: 'allow', asked: { network: 'web', type: 'user', via: 'guest', attached: true } });
    // Joined already: nothing more is asked or plugged.
    await t.nets.join('web', 'guest');
    expect(t.asked).toHaveLength(1);
    expect(t.attached).toHaveLength(1);
  });

  it('the CLI attaches without a question; leave unplugs, stops passt and tells the guest', async () => {
    const t = setup();
    await t.nets.join('dev', 'cli');
    expect(t.asked).toEqual([]);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'allow', reason: 'cli' });
    expect(await t.nets.leave('dev', 'cli')).toBe(true);
    expect(t.detached).toEqual(['dev']);
    expect(stopped).toEqual(['/run/x/work-net-dev.sock']);
    expect(t.told.at(-1)).toEqual({ network: 'dev', joined: false, mac: macFor('work', 'dev') });
    expect(await t.nets.leave('dev', 'cli')).toBe(false);
  });

  it('a bridge network and an unknown one are refused before anyone is asked', async () => {
    const t = setup({ consent: true });
    await expect(t.nets.join('lan', 'guest')).rejects.toThrow(/network 'lan' is a bridge network: not built yet: only user networks can be joined in this version/);
    await expect(t.nets.join('nope', 'guest')).rejects.toThrow(/there is no network 'nope' on this host; configured: web, dev, lan/);
    expect(t.asked).toEqual([]);
    expect(t.audits().map((l) => l.decision)).toEqual(['error', 'error']);
  });

  it('a deny row keeps a network out of the list', async () => {
    const t = setup({ rows: [{ portal: 'Network', subject: 'work', verdict: 'deny', arg: 'dev' }] });
    expect((await t.nets.list()).map((n) => n.name)).toEqual(['web', 'lan']);
  });

  it('at VMM up: an allow row naming a network attaches it; a VM-wide allow row attaches nothing; NICs already there are adopted', async () => {
    const t = setup({ rows: [{ portal: 'Network', subject: 'work', verdict: 'allow', arg: 'web' }, { portal: 'Network', subject: 'work', verdict: 'allow' }], present: ['dev'] });
    t.devices.emit('up');
    await vi.waitFor(() => expect(t.nets.joinedNames()).toEqual(['dev', 'web']));
    expect(t.attached.map((s) => s.id)).toEqual(['web']);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'allow', reason: 'policy', rule: 'Network web work allow', asked: { via: 'always' } });
    // The VM stops: once-joined networks end with it.
    t.devices.emit('gone', 'QMP closed');
    expect(t.nets.joinedNames()).toEqual([]);
  });

  it('a NIC the VM loses by itself is forgotten, audited and told', async () => {
    const t = setup();
    await t.nets.join('web', 'cli');
    t.devices.emit('device-detached', { type: 'device-detached', kind: 'net', id: 'web', deviceId: 'xdpvm-net-web', expected: false });
    expect(t.nets.joinedNames()).toEqual([]);
    expect(t.told.at(-1)).toMatchObject({ network: 'web', joined: false });
    expect(t.audits().at(-1)).toMatchObject({ decision: 'revoke', reason: 'failure' });
  });
});
