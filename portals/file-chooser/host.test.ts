import { describe, expect, it } from 'vitest';
import { Vm, type VmConfig } from '../../src/config/schema.js';
import type { Grant } from '../../src/host/documents.js';
import { acceptLabel, dialogRequest, suggestedName } from './dialog-options.js';
import { chosenPaths, dialogTitle, grantsWrite } from './host.js';
import type { Filter } from './schema.js';

const vm: VmConfig = { ...Vm.parse({ transport: { type: 'virtio-serial', socket: '/run/w.sock' } }), name: 'work', label: 'Work' };
const grant: Grant = { vm: 'work', id: 'abc', pathBytes: Buffer.from('/home/a/f.txt'), hostPath: '/home/a/f.txt', nameBytes: Buffer.from('f.txt'), name: 'f.txt', writable: false };
const docs = { lookup: async (v: string, id: string) => (v === 'work' && id === 'abc' ? grant : undefined) };

describe('what the host dialog shows', () => {
  it('names the VM in the title and shows what could disguise guest text as escapes', () => {
    expect(dialogTitle(vm, 'open', 'Open Report')).toBe('Work: Open Report');
    expect(dialogTitle(vm, 'save', '')).toBe('Work: Save File');
    expect(dialogTitle(vm, 'open', 'Bank\u202e\nlogin\u0007')).toBe('Work: Bank\\u{202e} login\\x07');
    expect(dialogTitle(vm, 'open', 'x'.repeat(500)).length).toBeLessThan(220);
  });

  it('names the VM on the accept button, where a save dialog with header bars still shows it', async () => {
    expect(acceptLabel(vm, 'save', undefined)).toBe('_Save (Work)');
    expect(acceptLabel(vm, 'open', '_Import\u202e')).toBe('_Import\\u{202e} (Work)');
    expect((await dialogRequest(vm, 'save-files', docs, {})).options.accept_label).toBe('_Save (Work)');
  });

  it('translates guest paths into the share and drops the rest', async () => {
    const { options } = await dialogRequest(vm, 'save', docs, { current_folder: '/run/xdp-vm/doc/abc', current_file: '/etc/passwd', current_name: 'new name.txt' });
    expect(options).toEqual({ accept_label: '_Save (Work)', current_folder: '/home/a', current_name: 'new name.txt' });
  });

  it('keeps the name of a dropped current_file as current_name, as Qt sends its suggestion only there', async () => {
    expect((await dialogRequest(vm, 'save', docs, { current_file: '/home/user/report.txt' })).options.current_name).toBe('report.txt');
    expect((await dialogRequest(vm, 'save', docs, { current_file: '/home/user/..' })).options).not.toHaveProperty('current_name');
    expect((await dialogRequest(vm, 'save', docs, { current_file: '/run/xdp-vm/doc/abc/f.txt' })).options).toMatchObject({ current_file: '/home/a/f.txt' });
  });

  it('a suggested name stays one path component after cleaning, within 255 bytes', () => {
    expect(suggestedName('a\u202eb.txt')).toBe('a\\u{202e}b.txt');
    expect(Buffer.byteLength(suggestedName('é'.repeat(200))!)).toBeLessThanOrEqual(255);
    expect(suggestedName('   ')).toBeUndefined();
  });
});

describe('answers go back in the guest\'s own terms', () => {
  const filters: Filter[] = [
    ['Text files ', [[0, '*.txt']]],
    ['Images\u202e', [[1, 'image/png']]],
  ];

  it('shows cleaned filters and maps the chosen one back to the guest\'s own, trailing space and all', async () => {
    const req = await dialogRequest(vm, 'open', docs, { filters, current_filter: filters[1] });
    expect(req.options.filters).toEqual([['Text files', [[0, '*.txt']]], ['Images\\u{202e}', [[1, 'image/png']]]]);
    expect(req.options.current_filter).toEqual(['Images\\u{202e}', [[1, 'image/png']]]);
    expect(req.answerForGuest({ current_filter: ['Text files', [[0, '*.txt']]] }).current_filter).toEqual(filters[0]);
    expect(req.answerForGuest({ current_filter: ['Other', [[0, '*']]] })).not.toHaveProperty('current_filter');
  });

  it('gives choices ids of the host\'s own and maps the answers back', async () => {
    const req = await dialogRequest(vm, 'open', docs, {
      choices: [
        ['enc\u202e', 'Encoding\n', [['utf8', 'UTF-8'], ['latin\u0000', 'Latin-1']], 'latin\u0000'],
        ['ro', 'Read only', [], 'true'],
      ],
    });
    expect(req.options.choices).toEqual([
      ['c0', 'Encoding', [['v0', 'UTF-8'], ['v1', 'Latin-1']], 'v1'],
      ['c1', 'Read only', [], 'true'],
    ]);
    expect(req.answerForGuest({ choices: [['c0', 'v0'], ['c1', 'false'], ['c9', 'v0'], ['c0', 'v7']] }).choices).toEqual([
      ['enc\u202e', 'utf8'],
      ['ro', 'false'],
    ]);
  });
});

describe('what the dialog returned must be what was shown', () => {
  const f = (p: string) => `file://${p}`;
  it('SaveFiles: every path is one of the asked names directly in one folder', () => {
    expect(chosenPaths('save-files', [f('/home/a/d/x.txt'), f('/home/a/d/y.txt')], ['x.txt', 'y.txt'])).toEqual([Buffer.from('/home/a/d/x.txt'), Buffer.from('/home/a/d/y.txt')]);
    expect(chosenPaths('save-files', [f('/home/a/d/x.txt'), f('/home/a/y.txt')], ['x.txt', 'y.txt'])).toMatch(/not all in one folder/);
    expect(chosenPaths('save-files', [f('/home/a/.bashrc')], ['ok.txt'])).toMatch(/not one of the names/);
    expect(chosenPaths('save-files', [f('/home/a/d/x.txt')], ['x.txt', 'y.txt'])).toMatch(/1 files for 2 names/);
  });

  it('a save returns one local file; a URI that is not a local file is refused', () => {
    expect(chosenPaths('save', [f('/a/x'), f('/a/y')], undefined)).toMatch(/2 files/);
    expect(chosenPaths('open', ['https://example.org/x'], undefined)).toMatch(/not a local file/);
    expect(chosenPaths('open', [], undefined)).toMatch(/no file/);
  });

  it('grants write for saving, and for opening only when the dialog reports writable', () => {
    expect(grantsWrite('save', {})).toBe(true);
    expect(grantsWrite('save-files', {})).toBe(true);
    expect(grantsWrite('open', {})).toBe(false);
    expect(grantsWrite('open', { writable: false })).toBe(false);
    expect(grantsWrite('open', { writable: true })).toBe(true);
  });
});
