import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { VmConfig } from '../../src/config/schema.js';
import type { DocumentStore } from '../../src/host/documents.js';
import { guestText, MAX_NAME_BYTES, nameProblem } from '../../src/guest-input.js';
import { guestPathToHost } from './paths.js';
import type { Choice, DialogKind, FileChooserOptions, FileChooserResults, Filter } from './schema.js';

/**
 * What the host dialog is shown, made from what the guest asked for, and the
 * way back: the user sees cleaned text and host paths, and the app gets its
 * own values back (its filter exactly as it sent it, its choice ids), because
 * an app matches the answer against what it offered (Qt keeps a trailing
 * space in a filter name and finds no selected filter if it comes back
 * trimmed).
 */
export interface DialogRequest {
  /** The options for the host dialog. */
  options: FileChooserOptions;
  /** The dialog's answer in the guest's own terms. `uris` and `writable` pass through. */
  answerForGuest(results: FileChooserResults): FileChooserResults;
}

const DEFAULT_VERB: Record<DialogKind, string> = { open: '_Open', save: '_Save', 'save-files': '_Save' };
const LABEL_CHARS = 100;

/**
 * The accept button names the VM: with header bars, a save dialog shows its
 * Name entry where the title would be, so the title alone does not tell the
 * user who is asking.
 */
export function acceptLabel(vm: VmConfig, kind: DialogKind, guestLabel: string | undefined): string {
  const verb = (guestLabel !== undefined && guestText(guestLabel, { max: 64 })) || DEFAULT_VERB[kind];
  return `${verb} (${vm.label})`;
}

/** A name to pre-fill, cleaned for showing and still one path component; undefined if nothing safe is left. */
export function suggestedName(name: string): string | undefined {
  let shown = guestText(name, { max: MAX_NAME_BYTES });
  while (Buffer.byteLength(shown) > MAX_NAME_BYTES) shown = [...shown].slice(0, -1).join('');
  return nameProblem(shown) ? undefined : shown;
}

const cleanFilter = ([name, rules]: Filter): Filter => [guestText(name, { max: LABEL_CHARS }), rules.map(([kind, rule]) => [kind, guestText(rule, { max: LABEL_CHARS })])];

/** Choices get ids of our own (`c0`, `v1`): the guest's ids never reach the dialog, and come back mapped. */
function hostChoice([, label, values, initial]: Choice, i: number): Choice {
  const hostValues = values.map(([, valueLabel], j): [string, string] => [`v${j}`, guestText(valueLabel, { max: LABEL_CHARS })]);
  const j = values.findIndex(([id]) => id === initial);
  // A choice without values is a checkbox, whose initial value is "true" or "false".
  const hostInitial = values.length === 0 ? (initial === 'true' ? 'true' : 'false') : j >= 0 ? `v${j}` : (hostValues[0]?.[0] ?? '');
  return [`c${i}`, guestText(label, { max: LABEL_CHARS }), hostValues, hostInitial];
}

function guestChoices(asked: Choice[], answered: [string, string][] | undefined): [string, string][] | undefined {
  if (!answered) return undefined;
  const out: [string, string][] = [];
  for (const [hostId, hostValue] of answered) {
    const choice = asked[Number(/^c(\d+)$/.exec(hostId)?.[1] ?? -1)];
    if (!choice) continue;
    const [id, , values] = choice;
    if (values.length === 0) {
      if (hostValue === 'true' || hostValue === 'false') out.push([id, hostValue]);
      continue;
    }
    const value = values[Number(/^v(\d+)$/.exec(hostValue)?.[1] ?? -1)];
    if (value) out.push([id, value[0]]);
  }
  return out;
}

export async function dialogRequest(vm: VmConfig, kind: DialogKind, docs: Pick<DocumentStore, 'lookup'>, guest: FileChooserOptions): Promise<DialogRequest> {
  const out: FileChooserOptions = { accept_label: acceptLabel(vm, kind, guest.accept_label) };
  for (const key of ['modal', 'multiple', 'directory', 'files'] as const) if (guest[key] !== undefined) (out as Record<string, unknown>)[key] = guest[key];
  const hostFilters = guest.filters?.map(cleanFilter);
  if (hostFilters) out.filters = hostFilters;
  if (guest.current_filter) out.current_filter = cleanFilter(guest.current_filter);
  const asked = guest.choices ?? [];
  if (guest.choices) out.choices = guest.choices.map(hostChoice);
  for (const key of ['current_folder', 'current_file'] as const) {
    const guestPath = guest[key];
    if (guestPath === undefined) continue;
    const hostPath = await guestPathToHost(guestPath, vm.name, vm.share.guestMount, docs);
    if (hostPath !== undefined) out[key] = hostPath;
  }
  // Qt sends its suggested name only as current_file; when that guest path means nothing here, keep the name.
  const name = guest.current_name ?? (guest.current_file !== undefined && out.current_file === undefined ? path.posix.basename(guest.current_file) : undefined);
  const shownName = name !== undefined ? suggestedName(name) : undefined;
  if (shownName !== undefined) out.current_name = shownName;
  return {
    options: out,
    answerForGuest(results) {
      const back: FileChooserResults = {};
      if (results.uris) back.uris = results.uris;
      if (results.writable !== undefined) back.writable = results.writable;
      const choices = guestChoices(asked, results.choices);
      if (choices) back.choices = choices;
      if (results.current_filter) {
        const i = hostFilters?.findIndex((f) => isDeepStrictEqual(f, results.current_filter)) ?? -1;
        const filter = i >= 0 ? guest.filters![i] : isDeepStrictEqual(out.current_filter, results.current_filter) ? guest.current_filter : undefined;
        if (filter) back.current_filter = filter;
      }
      return back;
    },
  };
}
