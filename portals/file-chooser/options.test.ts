import { describe, expect, it } from 'vitest';
import { PortalError } from '../../src/dbus/bus.js';
import { typed } from '../../src/dbus/values.js';
import { optionsFromVardict, optionsToVardict, resultsFromVardict, resultsToVardict } from './options.js';

const filters = [['Text', [[0, '*.txt'], [1, 'text/plain']]]];
const choices = [['enc', 'Encoding', [['utf8', 'UTF-8'], ['latin1', 'Latin-1']], 'utf8']];

describe('FileChooser options', () => {
  it('turns every OpenFile option of the XML into typed options', () => {
    const { options, dropped } = optionsFromVardict('open', {
      accept_label: typed('s', '_Open'),
      modal: typed('b', true),
      multiple: typed('b', true),
      directory: typed('b', false),
      filters: typed('a(sa(us))', filters),
      current_filter: typed('(sa(us))', filters[0]),
      choices: typed('a(ssa(ss)s)', choices),
      current_folder: typed('ay', Buffer.from('/run/xdp-vm/doc\0')),
    });
    expect(dropped).toEqual([]);
    expect(options).toEqual({ accept_label: '_Open', modal: true, multiple: true, directory: false, filters, current_filter: filters[0], choices, current_folder: '/run/xdp-vm/doc' });
  });

  it('drops keys outside the kind allow-list and keys with the wrong D-Bus type', () => {
    const { options, dropped } = optionsFromVardict('save-files', {
      multiple: typed('b', true),
      current_name: typed('s', 'x'),
      accept_label: typed('u', 3),
      files: typed('aay', [Buffer.from('a.txt\0'), Buffer.from('b.txt\0')]),
      evil: typed('s', 'rm -rf'),
    });
    expect(options).toEqual({ files: ['a.txt', 'b.txt'] });
    expect(dropped.sort()).toEqual(['accept_label', 'current_name', 'evil', 'multiple']);
  });

  it('drops a current_folder that is not UTF-8 but refuses a file name that is not', () => {
    expect(optionsFromVardict('save', { current_folder: typed('ay', Buffer.from([0xff, 0xfe, 0])) }).options).toEqual({});
    expect(() => optionsFromVardict('save-files', { files: typed('aay', [Buffer.from([0xff, 0])]) })).toThrow(PortalError);
  });

  it('refuses values past the caps with InvalidArgument naming the option', () => {
    const many = Array.from({ length: 65 }, (_, i) => [`f${i}`, [[0, '*']]]);
    expect(() => optionsFromVardict('open', { filters: typed('a(sa(us))', many) })).toThrow(/filters/);
    expect(() => optionsFromVardict('open', { accept_label: typed('s', 'x'.repeat(300)) })).toThrow(/accept_label/);
  });

  it('writes options back as the same D-Bus types, bytestrings NUL-terminated', () => {
    const v = optionsToVardict('save', { current_name: 'a.txt', current_folder: '/home/u', filters: filters as never, multiple: undefined });
    expect(Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x.signature]))).toEqual({ current_name: 's', current_folder: 'ay', filters: 'a(sa(us))' });
    expect(v.current_folder!.value).toEqual(Buffer.from('/home/u\0'));
  });

  it('round-trips results and ignores result keys of the wrong type', () => {
    const results = { uris: ['file:///a'], choices: [['enc', 'utf8']] as [string, string][], writable: true };
    expect(resultsFromVardict(resultsToVardict(results))).toEqual(results);
    expect(resultsFromVardict({ uris: typed('s', 'file:///a'), writable: typed('b', false) })).toEqual({ writable: false });
  });
});
