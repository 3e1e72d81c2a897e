import { describe, expect, it } from 'vitest';
import { Vm, type VmConfig } from '../../src/config/schema.js';
import type { Grant } from '../../src/host/documents.js';
import { dialogTitle, grantsWrite, hostOptions } from './host.js';

const vm: VmConfig = { ...Vm.parse({ transport: { type: 'virtio-serial', socket: '/run/w.sock' } }), name: 'work', label: 'Work' };
const grant: Grant = { vm: 'work', id: 'abc', hostPath: '/home/a/f.txt', name: 'f.txt', writable: false };
const docs = { lookup: async (v: string, id: string) => (v === 'work' && id === 'abc' ? grant : undefined) };

describe('host side of FileChooser', () => {
  it('names the VM in the title and strips what could disguise guest text', () => {
    expect(dialogTitle(vm, 'open', 'Open Report')).toBe('Work: Open Report');
    expect(dialogTitle(vm, 'save', '')).toBe('Work: Save File');
    expect(dialogTitle(vm, 'open', 'Bank\u202e\nlogin\u0007')).toBe('Work: Bank login');
    expect(dialogTitle(vm, 'open', 'x'.repeat(500)).length).toBeLessThan(220);
  });

  it('translates guest paths into the share and drops the rest', async () => {
    const out = await hostOptions(vm, docs, { current_folder: '/run/xdp-vm/doc/abc', current_file: '/etc/passwd', current_name: 'new\u0000name.txt' });
    expect(out).toEqual({ current_folder: '/home/a', current_name: 'new name.txt' });
  });

  it('keeps filters and choices but cleans their labels', async () => {
    const out = await hostOptions(vm, docs, {
      filters: [['Images\u202e', [[1, 'image/png']]]],
      choices: [['c', 'Pick\n', [['a', 'A\u0000']], 'a']],
      accept_label: '_Open',
    });
    expect(out).toEqual({ filters: [['Images', [[1, 'image/png']]]], choices: [['c', 'Pick', [['a', 'A']], 'a']], accept_label: '_Open' });
  });

  it('grants write for saving, and for opening only when the dialog reports writable', () => {
    expect(grantsWrite('save', {})).toBe(true);
    expect(grantsWrite('save-files', {})).toBe(true);
    expect(grantsWrite('open', {})).toBe(false);
    expect(grantsWrite('open', { writable: false })).toBe(false);
    expect(grantsWrite('open', { writable: true })).toBe(true);
  });
});
