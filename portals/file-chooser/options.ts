import { PortalError, type Vardict } from '../../src/dbus/bus.js';
import { bytesToString, stringToBytes, typed } from '../../src/dbus/values.js';
import { describeIssues } from '../../src/protocol/messages.js';
import { FileChooserOptions, FileChooserResults, OPTION_ROWS, RESULT_ROWS, type DialogKind, type OptionRow } from './schema.js';

/**
 * Option allow-lists: a{sv} from a frontend becomes typed, capped options, and
 * back. A key outside the method's rows, or with the wrong D-Bus type, is
 * dropped and reported, never passed on.
 */
const OPTION_BY_NAME = new Map<string, OptionRow>(OPTION_ROWS.map((r) => [r.name, r]));
const RESULT_BY_NAME = new Map<string, OptionRow>(RESULT_ROWS.map((r) => [r.name, r]));

/** Bytestrings (paths, names) travel as text; anything that is not UTF-8 is undefined. */
function fromDbus(signature: string, value: unknown): unknown {
  if (signature === 'ay') return bytesToString(value);
  if (signature === 'aay') {
    return (value as unknown[]).map((b) => {
      const name = bytesToString(b);
      if (name === undefined) throw new PortalError('InvalidArgument', 'a name in "files" is not valid UTF-8');
      return name;
    });
  }
  return value;
}

function toDbus(signature: string, value: unknown): unknown {
  if (signature === 'ay') return stringToBytes(value as string);
  if (signature === 'aay') return (value as string[]).map(stringToBytes);
  return value;
}

export interface ParsedOptions {
  options: FileChooserOptions;
  dropped: string[];
}

export function optionsFromVardict(kind: DialogKind, dict: Vardict): ParsedOptions {
  const raw: Record<string, unknown> = {};
  const dropped: string[] = [];
  for (const [key, v] of Object.entries(dict)) {
    const option = OPTION_BY_NAME.get(key);
    if (!option || !option.kinds.includes(kind) || v.signature !== option.signature) {
      dropped.push(key);
      continue;
    }
    const value = fromDbus(option.signature, v.value);
    if (value === undefined) dropped.push(key);
    else raw[key] = value;
  }
  const parsed = FileChooserOptions.safeParse(raw);
  if (!parsed.success) throw new PortalError('InvalidArgument', `invalid options: ${describeIssues(parsed.error)}`);
  return { options: parsed.data, dropped };
}

export function optionsToVardict(kind: DialogKind, options: FileChooserOptions): Vardict {
  const out: Vardict = {};
  for (const option of OPTION_ROWS) {
    const value = options[option.name];
    if (value !== undefined && option.kinds.includes(kind)) out[option.name] = typed(option.signature, toDbus(option.signature, value));
  }
  return out;
}

export function resultsToVardict(results: FileChooserResults): Vardict {
  const out: Vardict = {};
  for (const [key, value] of Object.entries(results)) {
    const result = RESULT_BY_NAME.get(key);
    if (result && value !== undefined) out[key] = typed(result.signature, value);
  }
  return out;
}

/** What a FileChooser frontend answered, reduced to the keys we know, each checked. */
export function resultsFromVardict(dict: Vardict): FileChooserResults {
  const raw: Record<string, unknown> = {};
  for (const result of RESULT_ROWS) {
    const v = dict[result.name];
    if (v && v.signature === result.signature) raw[result.name] = v.value;
  }
  const parsed = FileChooserResults.safeParse(raw);
  if (!parsed.success) throw new PortalError('Failed', `the file dialog returned invalid results: ${describeIssues(parsed.error)}`);
  return parsed.data;
}
