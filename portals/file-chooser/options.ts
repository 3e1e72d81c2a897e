import { PortalError, type Vardict } from '../../src/dbus/bus.js';
import { bytesToString, stringToBytes, typed } from '../../src/dbus/values.js';
import { describeIssues } from '../../src/protocol/messages.js';
import { FileChooserOptions, FileChooserResults, OPTIONS_OF_KIND, type DialogKind } from './schema.js';

/**
 * Option allow-lists: a{sv} from a frontend becomes typed, capped options, and
 * back. A key outside the kind's allow-list, or with the wrong D-Bus type, is
 * dropped and reported, never passed on.
 */
export const OPTION_SIGNATURES: Record<keyof FileChooserOptions, string> = {
  accept_label: 's',
  modal: 'b',
  multiple: 'b',
  directory: 'b',
  filters: 'a(sa(us))',
  current_filter: '(sa(us))',
  choices: 'a(ssa(ss)s)',
  current_name: 's',
  current_folder: 'ay',
  current_file: 'ay',
  files: 'aay',
};

const RESULT_SIGNATURES: Record<keyof FileChooserResults, string> = {
  uris: 'as',
  choices: 'a(ss)',
  current_filter: '(sa(us))',
  writable: 'b',
};

function fromDbus(key: keyof FileChooserOptions, value: unknown): unknown {
  if (key === 'current_folder' || key === 'current_file') return bytesToString(value);
  if (key === 'files') {
    return (value as unknown[]).map((b) => {
      const name = bytesToString(b);
      if (name === undefined) throw new PortalError('InvalidArgument', 'a name in "files" is not valid UTF-8');
      return name;
    });
  }
  return value;
}

export interface ParsedOptions {
  options: FileChooserOptions;
  dropped: string[];
}

export function optionsFromVardict(kind: DialogKind, dict: Vardict): ParsedOptions {
  const allowed = new Set<string>(OPTIONS_OF_KIND[kind]);
  const raw: Record<string, unknown> = {};
  const dropped: string[] = [];
  for (const [key, v] of Object.entries(dict)) {
    const k = key as keyof FileChooserOptions;
    if (!allowed.has(key) || v.signature !== OPTION_SIGNATURES[k]) {
      dropped.push(key);
      continue;
    }
    const value = fromDbus(k, v.value);
    if (value === undefined) dropped.push(key);
    else raw[key] = value;
  }
  const parsed = FileChooserOptions.safeParse(raw);
  if (!parsed.success) throw new PortalError('InvalidArgument', `invalid options: ${describeIssues(parsed.error)}`);
  return { options: parsed.data, dropped };
}

export function optionsToVardict(kind: DialogKind, options: FileChooserOptions): Vardict {
  const out: Vardict = {};
  for (const key of OPTIONS_OF_KIND[kind]) {
    const value = options[key];
    if (value === undefined) continue;
    const sig = OPTION_SIGNATURES[key];
    if (key === 'current_folder' || key === 'current_file') out[key] = typed(sig, stringToBytes(value as string));
    else if (key === 'files') out[key] = typed(sig, (value as string[]).map(stringToBytes));
    else out[key] = typed(sig, value);
  }
  return out;
}

export function resultsToVardict(results: FileChooserResults): Vardict {
  const out: Vardict = {};
  for (const [key, value] of Object.entries(results)) {
    if (value !== undefined) out[key] = typed(RESULT_SIGNATURES[key as keyof FileChooserResults], value);
  }
  return out;
}

/** What a FileChooser frontend answered, reduced to the keys we know, each checked. */
export function resultsFromVardict(dict: Vardict): FileChooserResults {
  const raw: Record<string, unknown> = {};
  for (const [key, sig] of Object.entries(RESULT_SIGNATURES)) {
    const v = dict[key];
    if (v && v.signature === sig) raw[key] = v.value;
  }
  const parsed = FileChooserResults.safeParse(raw);
  if (!parsed.success) throw new PortalError('Failed', `the file dialog returned invalid results: ${describeIssues(parsed.error)}`);
  return parsed.data;
}
