import { EventEmitter } from 'node:events';
import { existsSync, fstatSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
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
import { BusCallError } from '../../src/dbus/bus.js';
import type { HelperClient } from '../../src/helper/client.js';

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
  lab: Network.parse({ type: 'vm-only' }),
};
const vm = { name: 'work', label: 'Work', color: '#000000', tags: [], networks } as unknown as VmConfig;

/** The privileged helper as the daemon sees it: each call recorded, each tap a real descriptor (of /dev/null) the caller must close. */
function fakeHelper(opts: { refuse?: string } = {}) {
  const calls: string[] = [];
  const fds: number[] = [];
  let closed = 0;
  let n = 0;
  const client = {
    vmOnlyUp: async (br: string) => (calls.push(`vm-only-up ${br}`), '10.77.0.1/24'),
    tapCreate: async (br: string) => {
      calls.push(`tap-create ${br}`);
      if (opts.refuse) throw new BusCallError('org.freedesktop.portal.Error.NotAllowed', opts.refuse, 'TapCreate');
      return `xdpvm${n++}`;
    },
    tapOpen: async (tap: string) => (calls.push(`tap-open ${tap}`), fds.push(openSync('/dev/null', 'r')), fds.at(-1)!),
    tapDelete: async (tap: string) => void calls.push(`tap-delete ${tap}`),
    close: () => void closed++,
  } as unknown as HelperClient;
  return { connect: async () => client, calls, fds, connections: () => closed };
}

/** What each VMM offers a user network: QEMU both, libvirt its own without forwards, cloud-hypervisor none. */
const USER_NETWORKING = {
  qemu: { modes: ['passt', 'own'], ownForwards: true },
  libvirt: { modes: ['own'], ownForwards: false },
  'cloud-hypervisor': { modes: [], ownForwards: false },
} as const;

function setup(opts: { rows?: PolicyRow[]; consent?: boolean; present?: string[]; helper?: ReturnType<typeof fakeHelper>; helperProblem?: string; failAttach?: string; vmm?: keyof typeof USER_NETWORKING; passt?: boolean } = {}) {
  const attached: NetSpec[] = [];
  const detached: string[] = [];
  const present = new Set(opts.present ?? []);
  const kind = opts.vmm ?? 'qemu';
  const net = {
    userNetworking: USER_NETWORKING[kind],
    attachNet: async (spec: NetSpec) => {
      if (opts.failAttach) throw new Error(opts.failAttach);
      return attached.push(spec), present.add(spec.id), { kind: 'net' as const, id: spec.id, deviceId: `xdpvm-net-${spec.id}`, location: 'rp1' };
    },
    detachNet: async (id: string) => void (detached.push(id), present.delete(id)),
    listNet: async () => [...present].map((id) => ({ kind: 'net' as const, id, deviceId: `xdpvm-net-${id}`, location: 'rp1' })),
  };
  const devices = Object.assign(new EventEmitter(), {
    vmm: { kind, net },
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
  const runtime = mkdtempSync(path.join(tmpdir(), 'vmnet-'));
  configureAudit({ logger: cap.log, file: null });
  const nets = new VmNetworks({ vm, devices, policy, consent, nextRequestId: () => `r${++seq}`, notify: (c) => (told.push(c), true), dirs: { runtime, logs: '/log' }, passtInstalled: () => opts.passt ?? true, ...(opts.helper ? { helper: opts.helper.connect } : {}), ...(opts.helperProblem ? { helperProblem: async () => opts.helperProblem } : {}), log: captureLogger().log });
  const audits = () => cap.lines().filter((l) => l.audit === true);
  return { nets, devices, attached, detached, asked, told, audits, runtime };
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
    expect(started).toEqual([{ socket: path.join(t.runtime, 'work-net-web.sock'), forwards: [{ host: 2222, guest: 22, protocol: 'tcp' }] }]);
    expect(t.attached).toEqual([{ id: 'web', backend: { type: 'stream', socketPath: path.join(t.runtime, 'work-net-web.sock') }, mac: r.mac }]);
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
    expect(stopped).toEqual([path.join(t.runtime, 'work-net-dev.sock')]);
    expect(t.told.at(-1)).toEqual({ network: 'dev', joined: false, mac: macFor('work', 'dev') });
    expect(await t.nets.leave('dev', 'cli')).toBe(false);
  });

  it('QEMU without passt installed: its own user networking, with the forwards; nothing of ours to stop on leave', async () => {
    const t = setup({ consent: true, passt: false });
    const r = await t.nets.join('web', 'guest');
    expect(started).toEqual([]);
    expect(t.attached).toEqual([{ id: 'web', backend: { type: 'user', forwards: [{ host: 2222, guest: 22 }] }, mac: r.mac }]);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'allow', asked: { network: 'web', type: 'user', attached: true, userNet: 'vmm', forwards: ['2222:22'] } });
    expect(await t.nets.leave('web', 'guest')).toBe(true);
    expect(t.detached).toEqual(['web']);
    expect(stopped).toEqual([]);
  });

  it("libvirt: a user network is libvirt's own, even with passt installed; one with forwards is refused before anyone is asked", async () => {
    const t = setup({ consent: true, vmm: 'libvirt' });
    await t.nets.join('dev', 'guest');
    expect(t.attached).toEqual([{ id: 'dev', backend: { type: 'user', forwards: [] }, mac: macFor('work', 'dev') }]);
    expect(started).toEqual([]);
    await expect(t.nets.join('web', 'guest')).rejects.toThrow(
      "network 'web' forwards host ports (2222→22), and libvirt's own user networking cannot forward ports; remove the forwards, or reach this VM over a vm-only network",
    );
    expect(t.asked).toHaveLength(1);
    expect(t.attached).toHaveLength(1);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'error', asked: { network: 'web', via: 'guest' } });
  });

  it('cloud-hypervisor: a user network is refused plainly; QEMU without passt or its own would name the package', async () => {
    const t = setup({ consent: true, vmm: 'cloud-hypervisor' });
    await expect(t.nets.join('dev', 'guest')).rejects.toThrow("network 'dev' is a user network, and cloud-hypervisor has no user-mode networking; give this VM a bridge or vm-only network");
    expect(t.asked).toEqual([]);
    expect(t.attached).toEqual([]);
  });

  it('without the helper a bridge network, and an unknown one anywhere, are refused before anyone is asked', async () => {
    const t = setup({ consent: true });
    await expect(t.nets.join('lan', 'guest')).rejects.toThrow(/network 'lan' is a bridge network, and this daemon has no privileged helper to make its tap/);
    await expect(t.nets.join('nope', 'guest')).rejects.toThrow(/there is no network 'nope' on this host; configured: web, dev, lan, lab/);
    expect(t.asked).toEqual([]);
    expect(t.audits().map((l) => l.decision)).toEqual(['error', 'error']);
  });

  it('a helper the system bus does not have is found out before anyone is asked, for bridge networks only', async () => {
    const helper = fakeHelper();
    const t = setup({ consent: true, helper, helperProblem: 'the privileged helper is not installed on this host (README: "The privileged helper")' });
    await expect(t.nets.join('lan', 'guest')).rejects.toThrow(`could not join 'lan': the privileged helper is not installed on this host (README: "The privileged helper")`);
    expect(t.asked).toEqual([]);
    expect(helper.calls).toEqual([]);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'error', asked: { network: 'lan', why: expect.stringMatching(/not installed/) } });
    // A user network needs no helper.
    expect((await t.nets.join('web', 'guest')).network).toBe('web');
  });

  it('a deny row keeps a network out of the list', async () => {
    const t = setup({ rows: [{ portal: 'Network', subject: 'work', verdict: 'deny', arg: 'dev' }] });
    expect((await t.nets.list()).map((n) => n.name)).toEqual(['web', 'lan', 'lab']);
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

  it('a bridge join: a tap from the helper on that bridge, its descriptor to the VMM and then closed; leave deletes the tap', async () => {
    const helper = fakeHelper();
    const t = setup({ consent: true, helper });
    expect(await t.nets.join('lan', 'guest')).toEqual({ network: 'lan', mac: macFor('work', 'lan') });
    expect(t.asked).toEqual(["Work wants to join the network 'lan' (bridge br0: it will be reachable by other machines on that network)"]);
    expect(helper.calls).toEqual(['tap-create br0', 'tap-open xdpvm0']);
    expect(t.attached).toEqual([{ id: 'lan', backend: { type: 'tap', tapName: 'xdpvm0', fd: helper.fds[0] }, mac: macFor('work', 'lan') }]);
    expect(() => fstatSync(helper.fds[0]!)).toThrow(/EBADF/);
    expect(readFileSync(path.join(t.runtime, 'work-net-lan.tap'), 'utf8')).toBe('xdpvm0\n');
    expect(t.audits().at(-1)).toMatchObject({ decision: 'allow', reason: 'user', asked: { network: 'lan', type: 'bridge', attached: true, bridge: 'br0', tap: 'xdpvm0' } });
    expect(await t.nets.leave('lan', 'guest')).toBe(true);
    expect(t.detached).toEqual(['lan']);
    expect(helper.calls.at(-1)).toBe('tap-delete xdpvm0');
    expect(existsSync(path.join(t.runtime, 'work-net-lan.tap'))).toBe(false);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'revoke', asked: { network: 'lan', tap: 'xdpvm0', tapRemoved: true } });
    expect(helper.connections()).toBe(2);
  });

  it('a vm-only join brings its bridge up first and records the host\'s address on it', async () => {
    const helper = fakeHelper();
    const t = setup({ helper });
    await t.nets.join('lab', 'cli');
    expect(helper.calls).toEqual(['vm-only-up xdpvm-lab', 'tap-create xdpvm-lab', 'tap-open xdpvm0']);
    expect(t.audits().at(-1)).toMatchObject({ decision: 'allow', reason: 'cli', asked: { type: 'vm-only', bridge: 'xdpvm-lab', hostAddress: '10.77.0.1/24' } });
    // The VM stops: its tap is deleted with it.
    t.devices.emit('gone', 'QMP closed');
    await vi.waitFor(() => expect(helper.calls.at(-1)).toBe('tap-delete xdpvm0'));
  });

  it('a NIC the VMM refuses takes its tap with it; a helper refusal is the helper\'s own sentence', async () => {
    const helper = fakeHelper();
    const t = setup({ helper, failAttach: 'no free PCIe root port' });
    await expect(t.nets.join('lan', 'cli')).rejects.toThrow("could not join 'lan': no free PCIe root port");
    expect(helper.calls).toEqual(['tap-create br0', 'tap-open xdpvm0', 'tap-delete xdpvm0']);
    expect(existsSync(path.join(t.runtime, 'work-net-lan.tap'))).toBe(false);
    const refusing = fakeHelper({ refuse: 'no "bridge" or "vm-only" rule in /etc/xdp-vm/helper.conf names this user or their groups' });
    const r = setup({ helper: refusing });
    await expect(r.nets.join('lan', 'cli')).rejects.toThrow('could not join \'lan\': the privileged helper refused: no "bridge" or "vm-only" rule in /etc/xdp-vm/helper.conf names this user or their groups');
    expect(r.attached).toEqual([]);
  });

  it('a restarted daemon adopts a tap NIC by its record, and deletes that tap on leave', async () => {
    const helper = fakeHelper();
    const first = setup({ helper });
    await first.nets.join('lan', 'cli');
    const again = setup({ helper, present: ['lan'] });
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.join(again.runtime, 'work-net-lan.tap'), 'xdpvm0\n');
    again.devices.emit('up');
    await vi.waitFor(() => expect(again.nets.joinedNames()).toEqual(['lan']));
    await again.nets.leave('lan', 'cli');
    expect(helper.calls.at(-1)).toBe('tap-delete xdpvm0');
  });
});
