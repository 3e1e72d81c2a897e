import { describe, expect, it } from 'vitest';
import { checkArgument, isInvalid, portalOfTable, rowFromStore, Subject, tableOf, verdictToStore } from './model.js';

describe('the permission store encoding', () => {
  it('gives each portal a table of its own', () => {
    expect(tableOf('FileChooser')).toBe('xdp-vm-filechooser');
    expect(tableOf('Usb')).toBe('xdp-vm-usb');
    expect(tableOf('Network')).toBe('xdp-vm-network');
    expect(portalOfTable('xdp-vm-usb')).toBe('Usb');
    expect(portalOfTable('devices')).toBeUndefined();
  });

  it('stores verdicts as the tri-state flatpak prints', () => {
    expect(verdictToStore('allow')).toEqual(['yes']);
    expect(verdictToStore('deny')).toEqual(['no']);
    expect(verdictToStore('ask')).toEqual(['ask']);
  });

  it('reads a row with and without an argument', () => {
    expect(rowFromStore('FileChooser', '*', '@anyvm', ['no'])).toEqual({ portal: 'FileChooser', subject: '@anyvm', verdict: 'deny' });
    expect(rowFromStore('FileChooser', 'save', '@tag:dev', ['ask'])).toEqual({ portal: 'FileChooser', arg: 'save', subject: '@tag:dev', verdict: 'ask' });
    expect(rowFromStore('Usb', 'usb:1050/0407/0012345', 'work', ['yes'])).toEqual({ portal: 'Usb', arg: 'usb:1050/0407/0012345', subject: 'work', verdict: 'allow' });
  });

  it('takes an empty value (what flatpak permission-reset leaves) as no row, silently', () => {
    expect(rowFromStore('FileChooser', '*', 'work', [])).toBeUndefined();
  });

  const garbage: [string, string, string, unknown][] = [
    ['an unknown tri-state word', '*', 'work', ['maybe']],
    ['two values', '*', 'work', ['yes', 'no']],
    ['a non-string value', '*', 'work', [1]],
    ['an app id that is no VM, tag or @anyvm', '*', 'org.example.App', ['yes']],
    ['a malformed tag', '*', '@tag:', ['yes']],
    ['an argument the portal does not have', 'print', 'work', ['no']],
  ];
  for (const [what, id, app, value] of garbage) {
    it(`reports ${what} instead of guessing`, () => {
      const r = rowFromStore('FileChooser', id, app, value);
      expect(r && isInvalid(r)).toBe(true);
      if (r && isInvalid(r)) expect(r).toMatchObject({ table: 'xdp-vm-filechooser', id, app });
    });
  }

  it('reports a USB id that is not in canonical lowercase form', () => {
    const r = rowFromStore('Usb', 'usb:1050/04AB/x', 'work', ['yes']);
    expect(r && isInvalid(r) && r.problem).toMatch(/usb:1050\/04ab\/x/);
  });
});

describe('arguments and subjects', () => {
  it('normalises a USB device id and rejects what is not one', () => {
    expect(checkArgument('Usb', 'usb:1050/04AB/CC12')).toEqual({ ok: true, arg: 'usb:1050/04ab/CC12' });
    expect(checkArgument('Usb', 'usb:1050/0407/Yubico_YubiKey_OTP+FIDO+CCID')).toEqual({ ok: true, arg: 'usb:1050/0407/Yubico_YubiKey_OTP+FIDO+CCID' });
    expect(checkArgument('Usb', 'usb:0781/5581/SanDisk_Ultra_4C530001\\x20ü')).toEqual({ ok: true, arg: 'usb:0781/5581/SanDisk_Ultra_4C530001\\x20ü' });
    // udev never gives an empty ID_SERIAL, and no udev serial holds a slash, a space or a control character.
    for (const bad of ['usb:1050/0407/', 'usb:1050/0407/a/b', 'usb:1050/0407/a b', 'usb:1050/0407/a\u202eb', `usb:1050/0407/${'x'.repeat(256)}`]) {
      expect(checkArgument('Usb', bad).ok, bad).toBe(false);
    }
    expect(checkArgument('Usb', `usb:1050/0407/${'x'.repeat(255)}`).ok).toBe(true);
    const bad = checkArgument('Usb', '1050:0407');
    expect(bad.ok).toBe(false);
    if (!bad.ok) expect(bad.problem).toMatch(/usb:VID\/PID\/SERIAL/);
  });

  it('names the FileChooser arguments when one is wrong', () => {
    const bad = checkArgument('FileChooser', 'print');
    expect(bad.ok || bad.problem).toMatch(/open, save or save-files/);
  });

  it('accepts VM names, @tag:TAG and @anyvm as subjects, and nothing else', () => {
    for (const s of ['work', 'vm-2', '@tag:dev', '@anyvm']) expect(Subject.safeParse(s).success).toBe(true);
    for (const s of ['Work', '@any', '@tag:Dev', 'a.b', '', '@tag:']) expect(Subject.safeParse(s).success).toBe(false);
  });
});
