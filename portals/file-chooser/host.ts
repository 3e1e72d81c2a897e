import type { VmConfig } from '../../src/config/schema.js';
import type { Bus } from '../../src/dbus/bus.js';
import { audit } from '../../src/host/audit.js';
import type { DocumentStore, Grant } from '../../src/host/documents.js';
import type { Logger } from '../../src/log.js';
import { describeRow } from '../../src/policy/model.js';
import type { PolicyDecider } from '../../src/policy/policy.js';
import type { HandlerContext, Params, ResultOf } from '../../src/protocol/methods.js';
import { guestText } from '../../src/guest-input.js';
import { hop } from '../../src/trace.js';
import { showHostFileDialog } from './host-dialog.js';
import { guestPathToHost, guestUriOf, hostPathOfUri } from './paths.js';
import type { DialogKind, FileChooserOptions, FileChooserResults, OpenDialog } from './schema.js';

/**
 * The host half of FileChooser: turn the VM's request into a host dialog that
 * names the VM, and each chosen file into a document of that VM's view.
 */
export interface FileChooserHostDeps {
  vm: VmConfig;
  hostBus: Bus;
  docs: DocumentStore;
  log: Logger;
  requestId: string;
  policy: PolicyDecider;
  ensureShare: () => Promise<void>;
}

const DEFAULT_TITLES: Record<DialogKind, string> = { open: 'Open File', save: 'Save File', 'save-files': 'Save Files' };

export function dialogTitle(vm: VmConfig, kind: DialogKind, guestTitle: string): string {
  return `${vm.label}: ${guestText(guestTitle) || DEFAULT_TITLES[kind]}`;
}

/** Guest strings that the host dialog displays, cleaned; guest paths translated or dropped. */
export async function hostOptions(vm: VmConfig, docs: Pick<DocumentStore, 'lookup'>, options: FileChooserOptions): Promise<FileChooserOptions> {
  const out: FileChooserOptions = { ...options };
  if (out.accept_label !== undefined) out.accept_label = guestText(out.accept_label, { max: 64 });
  if (out.current_name !== undefined) out.current_name = guestText(out.current_name, { max: 255 });
  out.filters = out.filters?.map(([name, rules]) => [guestText(name, { max: 100 }), rules]);
  if (out.current_filter) out.current_filter = [guestText(out.current_filter[0], { max: 100 }), out.current_filter[1]];
  out.choices = out.choices?.map(([id, label, values, initial]) => [id, guestText(label, { max: 100 }), values.map(([k, v]) => [k, guestText(v, { max: 100 })]), initial]);
  for (const key of ['current_folder', 'current_file'] as const) {
    const guestPath = out[key];
    if (guestPath === undefined) continue;
    const hostPath = await guestPathToHost(guestPath, vm.name, vm.share.guestMount, docs);
    if (hostPath === undefined) delete out[key];
    else out[key] = hostPath;
  }
  for (const key of Object.keys(out) as (keyof FileChooserOptions)[]) if (out[key] === undefined) delete out[key];
  return out;
}

/**
 * Saving needs write access. An opened file is writable only when the dialog
 * says so; the stock frontend passes `writable` on to sandboxed callers only,
 * so through it an opened file stays read-only (README: Limitations).
 */
export function grantsWrite(kind: DialogKind, results: FileChooserResults): boolean {
  return kind !== 'open' || results.writable === true;
}

/** Each chosen local file or folder becomes a document of the VM's view. */
async function grantChosen(uris: string[], write: boolean, deps: FileChooserHostDeps): Promise<Grant[]> {
  const grants: Grant[] = [];
  for (const uri of uris) {
    const hostPath = hostPathOfUri(uri);
    if (!hostPath) {
      deps.log.warn({ uri }, 'the host dialog returned a URI that is not a local file; it cannot be shared with the VM');
      continue;
    }
    grants.push(await deps.docs.grant(deps.vm.name, hostPath, { write }));
  }
  return grants;
}

export async function handleOpenDialog(params: Params<typeof OpenDialog>, ctx: HandlerContext, deps: FileChooserHostDeps): Promise<ResultOf<typeof OpenDialog>> {
  const { vm, docs, log, requestId } = deps;
  hop(log, 'host.received');
  const asked = { kind: params.kind, title: guestText(params.title), appId: guestText(params.appId, { max: 100 }) };
  // The dialog is itself the consent, so only deny (or an unreadable policy) skips it.
  const policy = await deps.policy.decision('FileChooser', params.kind, vm);
  if (policy.verdict === 'deny') {
    const rule = policy.row ? describeRow(policy.row) : undefined;
    log.info({ rule }, 'denied by policy: no dialog shown');
    audit({ vm: vm.name, portal: 'FileChooser', request: requestId, decision: 'deny', reason: policy.error ? 'failure' : 'policy', grant: null, asked, ...(rule ? { rule } : {}) });
    return { response: 2, results: {} };
  }
  const options = await hostOptions(vm, docs, params.options);
  const title = dialogTitle(vm, params.kind, params.title);
  log.info({ kind: params.kind, title, dropped: Object.keys(params.options).filter((k) => !(k in options)) }, 'showing the host file dialog');
  hop(log, 'host.dialog-called');
  const answer = await showHostFileDialog(deps.hostBus, params.kind, title, options, ctx.signal);
  hop(log, 'host.dialog-answered', { response: answer.response });
  if (answer.response !== 0 || ctx.signal.aborted) {
    const reason = ctx.signal.aborted ? 'closed' : answer.response === 1 ? 'user' : 'failure';
    audit({ vm: vm.name, portal: 'FileChooser', request: requestId, decision: 'cancel', reason, grant: null, asked });
    return { response: answer.response === 0 ? 2 : answer.response, results: {} };
  }
  const write = grantsWrite(params.kind, answer.results);
  const grants = await grantChosen(answer.results.uris ?? [], write, deps).catch((err: Error) => {
    log.error({ err: err.message }, 'the document store refused the grant');
    return [];
  });
  if (grants.length === 0) {
    audit({ vm: vm.name, portal: 'FileChooser', request: requestId, decision: 'error', reason: 'failure', grant: null, asked });
    return { response: 2, results: {} };
  }
  audit({
    vm: vm.name,
    portal: 'FileChooser',
    request: requestId,
    decision: 'allow',
    reason: 'user',
    grant: grants.map((g) => g.id),
    asked: { ...asked, paths: grants.map((g) => g.hostPath), writable: write },
  });
  hop(log, 'host.granted', { grants: grants.length });
  // The first grant of a VM may be what needs its share plugged in.
  await deps.ensureShare().catch((err: Error) => log.error({ err: err.message }, 'the VM\'s share could not be plugged in; the app will not find the file'));
  hop(log, 'host.share-ready');
  const uris = grants.map((g) => guestUriOf(g, vm.share.guestMount));
  const results = params.kind === 'open' ? { ...answer.results, uris, writable: write } : { ...answer.results, uris };
  return { response: 0, results };
}
