import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/load.js';
import { vmConfigs } from '../../src/config/schema.js';
import { runProgram, ExecError } from '../../src/exec.js';
import { cliEntry } from '../../src/paths.js';

const good = {
  vms: {
    work: { label: 'Work', color: '#3465a4', tags: ['trusted'], transport: { type: 'vsock', cid: 5 } },
    shop: { transport: { type: 'hybrid-vsock', socket: '/run/ch/shop.vsock' }, vmm: { type: 'cloud-hypervisor', socket: '/run/ch/shop.api' } },
    old: { transport: { type: 'virtio-serial', socket: '/run/qemu/old-portal.sock' }, share: { guestMount: '/mnt/host' } },
  },
};

function problems(cfg: unknown): string[] {
  try {
    parseConfig(JSON.stringify(cfg), 'config.json');
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('config', () => {
  it('fills defaults for a valid config', () => {
    const vms = vmConfigs(parseConfig(JSON.stringify(good), 'c.json'));
    expect(vms.map((v) => [v.name, v.label])).toEqual([['work', 'Work'], ['shop', 'shop'], ['old', 'old']]);
    const work = vms[0]!;
    expect(work.transport).toEqual({ type: 'vsock', cid: 5, port: 5000 });
    expect(work.share).toEqual({ guestMount: '/run/xdp-vm/doc', tag: 'xdp-vm-doc', cache: 'none' });
    expect(work.vmm).toEqual({ type: 'none' });
  });

  it('reports one problem per mistake, each naming its key', () => {
    const bad = {
      vms: {
        Work: { transport: { type: 'vsock', cid: 5 } },
        a: { color: 'red', transport: { type: 'vsock', cid: 2 } },
        b: { transport: { type: 'hybrid-vsock', socket: 'relative', port: 'x' }, extra: 1 },
        c: { transport: { type: 'carrier-pigeon' } },
      },
    };
    const p = problems(bad);
    expect(p).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^vms\.Work: .*lowercase/),
        expect.stringMatching(/^vms\.a\.color: must be a colour/),
        expect.stringMatching(/^vms\.a\.transport\.cid: /),
        expect.stringMatching(/^vms\.b\.transport\.socket: must be an absolute path/),
        expect.stringMatching(/^vms\.b\.transport\.port: /),
        expect.stringMatching(/^vms\.b: unknown key\(s\) "extra"/),
        expect.stringMatching(/^vms\.c\.transport\.type: /),
      ]),
    );
    expect(p).toHaveLength(7);
  });

  it('refuses two VMs on one identity', () => {
    const p = problems({ vms: { a: { transport: { type: 'vsock', cid: 7 } }, b: { transport: { type: 'vsock', cid: 7 } } } });
    expect(p).toEqual(['vms.b.transport.cid: CID 7 is already used by VM "a"']);
  });

  describe('networks', () => {
    const vms = { work: { transport: { type: 'vsock', cid: 5 } } };

    it('fills defaults, and hands every VM the table', () => {
      const cfg = parseConfig(JSON.stringify({ vms, networks: { web: { type: 'user', forwards: [{ host: 2222, guest: 22 }] }, lan: { type: 'bridge', bridge: 'br0' }, lab: { type: 'vm-only' } } }), 'c.json');
      expect(cfg.networks!.web).toEqual({ type: 'user', forwards: [{ host: 2222, guest: 22, protocol: 'tcp' }] });
      expect(vmConfigs(cfg)[0]!.networks).toBe(cfg.networks);
      expect(vmConfigs(parseConfig(JSON.stringify({ vms }), 'c.json'))[0]!.networks).toBeUndefined();
    });

    it('reports each mistake at its key, in words', () => {
      const p = problems({
        vms,
        networks: {
          Web: { type: 'user' },
          'a-very-long-network': { type: 'user' },
          '9lives': { type: 'user' },
          wan: { type: 'nat' },
          low: { type: 'user', forwards: [{ host: 80, guest: 8080 }] },
          big: { type: 'user', forwards: [{ host: 70000, guest: 0 }] },
          udp: { type: 'user', forwards: [{ host: 5353, guest: 53, protocol: 'udp' }] },
          br: { type: 'bridge' },
          mixed: { type: 'bridge', bridge: 'br0', forwards: [] },
          lab: { type: 'vm-only', hostAddress: '10.77.0.1/24' },
        },
      });
      expect(p).toEqual(
        expect.arrayContaining([
          expect.stringMatching(/^networks\.Web: .*lowercase/),
          expect.stringMatching(/^networks\.a-very-long-network: .*1-15/),
          expect.stringMatching(/^networks\.9lives: .*starting with a letter/),
          expect.stringMatching(/^networks\.wan\.type: a network's type is "user", "bridge" or "vm-only"/),
          expect.stringMatching(/^networks\.low\.forwards\.0\.host: a host port must be 1024 or more/),
          expect.stringMatching(/^networks\.big\.forwards\.0\.host: a port is at most 65535/),
          expect.stringMatching(/^networks\.big\.forwards\.0\.guest: a port is 1 to 65535/),
          expect.stringMatching(/^networks\.udp\.forwards\.0\.protocol: only "tcp"/),
          expect.stringMatching(/^networks\.br\.bridge: /),
          expect.stringMatching(/^networks\.mixed: unknown key\(s\) "forwards"/),
          expect.stringMatching(/^networks\.lab: unknown key\(s\) "hostAddress"/),
        ]),
      );
      expect(p).toHaveLength(11);
    });

    it('refuses one host port forwarded twice, in one network or across two', () => {
      const p = problems({
        vms,
        networks: {
          web: { type: 'user', forwards: [{ host: 2222, guest: 22 }, { host: 8080, guest: 80 }] },
          dev: { type: 'user', forwards: [{ host: 3000, guest: 3000 }, { host: 3000, guest: 3001 }, { host: 2222, guest: 2222 }] },
        },
      });
      expect(p).toEqual(['networks.dev.forwards.1.host: host port 3000 is already forwarded by this network', 'networks.dev.forwards.2.host: host port 2222 is already forwarded by network "web"']);
    });
    it('refuses one bridge named by two networks, and a default bridge name the kernel cannot take', () => {
      const p = problems({
        vms,
        networks: {
          lan: { type: 'bridge', bridge: 'br0' },
          office: { type: 'bridge', bridge: 'br0' },
          lab: { type: 'vm-only' },
          other: { type: 'vm-only', bridge: 'xdpvm-lab' },
          'a-long-lab-name': { type: 'vm-only' },
          'a-long-one': { type: 'vm-only', bridge: 'xdpvm-long' },
        },
      });
      expect(p).toEqual([
        'networks.office.bridge: bridge br0 is already network "lan"',
        'networks.other.bridge: bridge xdpvm-lab is already network "lab"',
        'networks.a-long-lab-name: its default bridge name "xdpvm-a-long-lab-name" is longer than the kernel\'s 15 characters: give it a "bridge"',
      ]);
    });
  });

  it('names the file for unreadable or non-JSON configs', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cfg-'));
    writeFileSync(path.join(dir, 'bad.json'), '{ "vms": ');
    expect(() => loadConfig(path.join(dir, 'bad.json'))).toThrow(/bad\.json: not valid JSON/);
    expect(() => loadConfig(path.join(dir, 'missing.json'))).toThrow(/missing\.json: no such file/);
  });

  it('makes the CLI exit 2 with one line per problem', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cfg-'));
    const file = path.join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ vms: { work: { transport: { type: 'vsock', cid: 1 }, colour: '#fff' } } }));
    const err = (await runProgram(process.execPath, [cliEntry(), 'host', '--config', file]).catch((e: unknown) => e)) as ExecError;
    expect(err).toBeInstanceOf(ExecError);
    expect(err.exitCode).toBe(2);
    expect(err.stderr.trim().split('\n')).toEqual([
      `xdp-vm: ${file}: vms.work.transport.cid: Too small: expected number to be >=3`,
      `xdp-vm: ${file}: vms.work: unknown key(s) "colour"`,
    ]);
  });
});

describe('the CLI #! line', () => {
  it('passes the Node flags the tests and the bench start the daemon with', async () => {
    const { readFileSync } = await import('node:fs');
    const { NODE_FLAGS, packageRoot } = await import('../../src/paths.js');
    const first = readFileSync(path.join(packageRoot(), 'src', 'cli', 'main.ts'), 'utf8').split('\n')[0];
    expect(first).toBe(`#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
  });
});
