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
