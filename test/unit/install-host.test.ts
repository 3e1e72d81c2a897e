import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { stripJsonComments } from '../../src/config/jsonc.js';
import { ConfigError, loadConfig, parseConfig } from '../../src/config/load.js';
import { Config } from '../../src/config/schema.js';
import { ExecError, runProgram } from '../../src/exec.js';
import { configSkeleton } from '../../src/host/install.js';
import { cliEntry } from '../../src/paths.js';

const HOME = '/home/alice';
const UNIT = `${HOME}/.config/systemd/user/xdp-vm-host.service`;
const DBUS = `${HOME}/.local/share/dbus-1/services/io.github.xdp_vm.Host.service`;
const CONFIG = `${HOME}/.config/xdp-vm/config.json`;

const scratch = () => mkdtempSync(path.join(tmpdir(), 'host-root-'));
const xdpVm = (args: string[], env: Record<string, string> = {}) =>
  runProgram(process.execPath, [cliEntry(), ...args], { env: { ...process.env, HOME, XDG_CONFIG_HOME: '', XDG_DATA_HOME: '', XDG_STATE_HOME: '', PATH: '/usr/bin:/bin', ...env } });
const read = (root: string, p: string) => readFileSync(path.join(root, p), 'utf8');

/** Every key the schema knows, and every literal (transport and VMM types, cache modes). */
function schemaWords(schema: z.ZodType, keys = new Set<string>(), literals = new Set<string>()) {
  const def = (schema as unknown as { _zod: { def: Record<string, unknown> & { type: string } } })._zod.def;
  const walk = (s: unknown) => schemaWords(s as z.ZodType, keys, literals);
  switch (def.type) {
    case 'object':
      for (const [k, v] of Object.entries(def.shape as Record<string, unknown>)) keys.add(k), walk(v);
      break;
    case 'union':
      (def.options as unknown[]).forEach(walk);
      break;
    case 'optional':
    case 'default':
    case 'nullable':
      walk(def.innerType);
      break;
    case 'record':
      walk(def.valueType);
      break;
    case 'array':
      walk(def.element);
      break;
    case 'literal':
      for (const v of def.values as unknown[]) literals.add(String(v));
      break;
    case 'enum':
      for (const v of Object.values(def.entries as Record<string, string>)) literals.add(v);
      break;
  }
  return { keys, literals };
}

/** The skeleton with its example lines uncommented: a `// ` followed by a key, `}` or `]`. */
const uncommented = (text: string) => text.replace(/^(\s*)\/\/ (?=\s*["}\]])/gm, '$1');

describe('JSON with comments in the host config', () => {
  it('blanks // and /* */ comments outside strings, keeping every position', () => {
    const text = '{\n  // a comment "with quotes"\n  "a": "http://x/*y*/", /* block\n over lines */ "b": 1 // end\n}';
    const stripped = stripJsonComments(text);
    expect(stripped).toHaveLength(text.length);
    expect(stripped.split('\n')).toHaveLength(text.split('\n').length);
    expect(JSON.parse(stripped)).toEqual({ a: 'http://x/*y*/', b: 1 });
    expect(stripJsonComments('{"a": "q\\"//"}')).toBe('{"a": "q\\"//"}');
  });

  it('still reports bad JSON with its line', () => {
    expect(() => parseConfig('// fine\n{ "vms": {}, }', 'c.json')).toThrow(ConfigError);
  });
});

describe('the config skeleton', () => {
  it('loads with the real loader, and configures no VM', () => {
    const dir = scratch();
    writeFileSync(path.join(dir, 'config.json'), configSkeleton());
    expect(loadConfig(path.join(dir, 'config.json'))).toEqual({ vms: {} });
  });

  it('names every key of the schema, and every transport and VMM type', () => {
    const { keys, literals } = schemaWords(Config);
    const text = configSkeleton();
    for (const k of keys) expect(text, `key ${k}`).toContain(`"${k}":`);
    for (const l of literals) expect(text, `value ${l}`).toContain(`"${l}"`);
  });

  it('its example, uncommented, is a valid config that sets every key of a VM', () => {
    const cfg = parseConfig(uncommented(configSkeleton()), 'skeleton');
    const work = cfg.vms.work!;
    expect(Object.keys(work).sort()).toEqual(['color', 'label', 'share', 'tags', 'transport', 'usb', 'vmm']);
    expect(Object.keys(work.share).sort()).toEqual(['cache', 'guestMount', 'socket', 'tag']);
    expect(work.usb).toEqual({ provider: false });
    expect(cfg).toMatchObject({ virtiofsd: '/usr/lib/qemu/virtiofsd', flood: { maxPending: 4, maxRecent: 30, windowSeconds: 60 } });
  });
});

describe('install-host', () => {
  it('--dry-run lists every file and writes none', async () => {
    const root = scratch();
    const { stdout } = await xdpVm(['install-host', '--dry-run', '--root', root]);
    for (const f of [UNIT, DBUS, CONFIG]) expect(stdout).toContain(f);
    expect(existsSync(path.join(root, 'home'))).toBe(false);
  });

  it('writes the user unit, the D-Bus activation of the daemon\'s bus name and the skeleton, with a manifest', async () => {
    const root = scratch();
    await xdpVm(['install-host', '--root', root, '--command', '/usr/bin/xdp-vm']);
    expect(read(root, UNIT)).toMatch(/BusName=io\.github\.xdp_vm\.Host\nExecStart=\/usr\/bin\/xdp-vm host\n/);
    expect(read(root, DBUS)).toBe('[D-BUS Service]\nName=io.github.xdp_vm.Host\nExec=/usr/bin/xdp-vm host\nSystemdService=xdp-vm-host.service\n');
    expect(read(root, CONFIG)).toBe(configSkeleton());
    const manifest = JSON.parse(read(root, `${HOME}/.local/state/xdp-vm/install-host.json`)) as { files: { path: string }[] };
    expect(manifest.files.map((f) => f.path)).toEqual([UNIT, DBUS, CONFIG]);
  });

  it('follows XDG_CONFIG_HOME and XDG_DATA_HOME', async () => {
    const root = scratch();
    await xdpVm(['install-host', '--root', root], { XDG_CONFIG_HOME: '/cfg', XDG_DATA_HOME: '/data' });
    expect(existsSync(path.join(root, 'cfg/systemd/user/xdp-vm-host.service'))).toBe(true);
    expect(existsSync(path.join(root, 'data/dbus-1/services/io.github.xdp_vm.Host.service'))).toBe(true);
    expect(existsSync(path.join(root, 'cfg/xdp-vm/config.json'))).toBe(true);
  });

  it('refuses to overwrite a unit it did not write; --force does, and never touches an existing config', async () => {
    const root = scratch();
    mkdirSync(path.dirname(path.join(root, UNIT)), { recursive: true });
    mkdirSync(path.dirname(path.join(root, CONFIG)), { recursive: true });
    writeFileSync(path.join(root, UNIT), '[Service]\nExecStart=/opt/mine\n');
    writeFileSync(path.join(root, CONFIG), '{ "vms": {} }\n');
    const err = (await xdpVm(['install-host', '--root', root]).catch((e: unknown) => e)) as ExecError;
    expect(err.stderr).toContain(UNIT);
    expect(err.stderr).not.toContain(CONFIG);
    expect(read(root, UNIT)).toBe('[Service]\nExecStart=/opt/mine\n');
    expect(existsSync(path.join(root, DBUS))).toBe(false);
    const { stdout } = await xdpVm(['install-host', '--root', root, '--force']);
    expect(stdout).toContain(`${CONFIG}  [exists: kept as it is]`);
    expect(read(root, UNIT)).toContain('BusName=io.github.xdp_vm.Host');
    expect(read(root, CONFIG)).toBe('{ "vms": {} }\n');
  });

  it('installs again over its own files, keeps what the user changed, and uninstall-host removes only the rest', async () => {
    const root = scratch();
    await xdpVm(['install-host', '--root', root]);
    const edited = `${read(root, CONFIG)}// mine\n`;
    writeFileSync(path.join(root, CONFIG), edited);
    writeFileSync(path.join(root, DBUS), `${read(root, DBUS)}# tuned\n`);
    const again = await xdpVm(['install-host', '--root', root, '--command', '/opt/xdp-vm']);
    expect(again.stdout).toContain(`${DBUS}  [changed since install-host wrote it: kept]`);
    expect(read(root, UNIT)).toContain('ExecStart=/opt/xdp-vm host');
    expect(read(root, DBUS)).toContain('# tuned');
    expect(read(root, CONFIG)).toBe(edited);
    const { stdout } = await xdpVm(['uninstall-host', '--root', root]);
    expect(stdout).toContain(`removed ${UNIT}`);
    expect(stdout).toContain(`kept ${CONFIG} (changed since install-host wrote it)`);
    expect(existsSync(path.join(root, UNIT))).toBe(false);
    expect(read(root, CONFIG)).toBe(edited);
    expect(existsSync(path.join(root, `${HOME}/.local/state/xdp-vm/install-host.json`))).toBe(false);
  });

  it('does not shadow a unit and activation file the system provides (the Debian package)', async () => {
    const root = scratch();
    for (const f of ['usr/lib/systemd/user/xdp-vm-host.service', 'usr/share/dbus-1/services/io.github.xdp_vm.Host.service']) {
      mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
      writeFileSync(path.join(root, f), '# packaged\n');
    }
    const { stdout } = await xdpVm(['install-host', '--root', root]);
    expect(stdout).toContain('the system provides /usr/lib/systemd/user/xdp-vm-host.service');
    expect(existsSync(path.join(root, UNIT))).toBe(false);
    expect(existsSync(path.join(root, DBUS))).toBe(false);
    expect(read(root, CONFIG)).toBe(configSkeleton());
  });

  it('--system writes /usr paths for every user and the skeleton as an example', async () => {
    const root = scratch();
    await xdpVm(['install-host', '--system', '--root', root, '--command', '/usr/bin/xdp-vm']);
    expect(read(root, 'usr/lib/systemd/user/xdp-vm-host.service')).toContain('ExecStart=/usr/bin/xdp-vm host');
    expect(read(root, 'usr/share/dbus-1/services/io.github.xdp_vm.Host.service')).toContain('Name=io.github.xdp_vm.Host');
    expect(read(root, 'etc/xdp-vm/config.example.json')).toBe(configSkeleton());
    const { stdout } = await xdpVm(['uninstall-host', '--system', '--root', root]);
    expect(stdout).toContain('removed /usr/lib/systemd/user/xdp-vm-host.service');
    expect(existsSync(path.join(root, 'etc/xdp-vm/config.example.json'))).toBe(false);
  });

  it('uninstall-host without an install says so', async () => {
    const err = (await xdpVm(['uninstall-host', '--root', scratch()]).catch((e: unknown) => e)) as ExecError;
    expect(err.stderr).toMatch(/nothing to remove: .*install-host\.json does not exist/);
  });
});
