import type { VmConfig } from '../../src/config/schema.js';
import type { Bus } from '../../src/dbus/bus.js';
import { audit } from '../../src/host/audit.js';
import { GrantRefused, whyNotGrantable, type DocumentStore, type Grant } from '../../src/host/documents.js';
import { basenameBytes, dirnameBytes, displayBytes } from '../../src/file-uri.js';
import type { Logger } from '../../src/log.js';
import { describeRow } from '../../src/policy/model.js';
import type { PolicyDecider } from '../../src/policy/policy.js';
import type { HandlerContext, Params, ResultOf } from '../../src/protocol/methods.js';
import type { HostHalf } from '../portal.js';
import { guestLogText, guestText } from '../../src/guest-input.js';
import { plantedLinkProblem, vmWritableFolders } from '../../src/host/planted-links.js';
import { hop } from '../../src/trace.js';
import { showHostFileDialog } from './host-dialog.js';
import { dialogRequest } from './dialog-options.js';
import { guestUriOf, hostPathOfUri } from './paths.js';
import { OpenDialog, type DialogKind, type FileChooserResults } from './schema.js';

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

/**
 * Saving needs write access. An opened file is writable only when the dialog
 * says so (the user unticked "Open files read-only").
 */
export function grantsWrite(kind: DialogKind, results: FileChooserResults): boolean {
  return kind !== 'open' || results.writable === true;
}

/**
 * What the dialog answered, as host paths, checked against what was shown:
 * SaveFiles names are joined to the folder the user picks, so every path
 * must be one of the asked-for names directly in one folder; a save returns
 * one path. Anything else is refused whole.
 */
export function chosenPaths(kind: DialogKind, uris: string[], files: string[] | undefined): Buffer[] | string {
  const paths: Buffer[] = [];
  for (const uri of uris) {
    const p = hostPathOfUri(uri);
    if (!p) return `the dialog returned ${guestText(uri, { max: 80 })}, which is not a local file`;
    paths.push(p);
  }
  if (paths.length === 0) return 'the dialog returned no file';
  if (kind === 'save' && paths.length !== 1) return `a save returned ${paths.length} files`;
  if (kind === 'save-files') {
    const folder = dirnameBytes(paths[0]!);
    const asked = new Set((files ?? []).map((f) => Buffer.from(f).toString('hex')));
    for (const p of paths) {
      if (!dirnameBytes(p).equals(folder)) return 'the saved files are not all in one folder';
      if (!asked.has(basenameBytes(p).toString('hex'))) return `${displayBytes(p)} is not one of the names the app asked to save`;
    }
    if (paths.length !== asked.size) return `the dialog returned ${paths.length} files for ${asked.size} names`;
  }
  return paths;
}

/** Each chosen local file or folder becomes a document of the VM's view; all or nothing. */
async function grantChosen(paths: Buffer[], write: boolean, deps: FileChooserHostDeps): Promise<Grant[]> {
  const grants: Grant[] = [];
  try {
    for (const p of paths) grants.push(await deps.docs.grant(deps.vm.name, p, { write }));
  } catch (err) {
    for (const g of grants) await deps.docs.revoke(deps.vm.name, g.id).catch(() => undefined);
    throw err;
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
  const request = await dialogRequest(vm, params.kind, docs, params.options);
  const title = dialogTitle(vm, params.kind, params.title);
  log.info({ kind: params.kind, title, dropped: Object.keys(params.options).filter((k) => !(k in request.options)) }, 'showing the host file dialog');
  hop(log, 'host.dialog-called');
  let answer: Awaited<ReturnType<typeof showHostFileDialog>>;
  try {
    answer = await showHostFileDialog(deps.hostBus, params.kind, title, request.options, ctx.signal);
  } catch (err) {
    // The dialog refused the options (the frontend's own checks) or could not be shown: the app gets 2, the audit says why.
    const why = guestLogText((err as Error).message, 300);
    log.warn({ why }, 'the host file dialog could not be shown');
    audit({ vm: vm.name, portal: 'FileChooser', request: requestId, decision: 'error', reason: 'failure', grant: null, asked: { ...asked, refused: why } });
    return { response: 2, results: {} };
  }
  hop(log, 'host.dialog-answered', { response: answer.response });
  if (answer.response !== 0 || ctx.signal.aborted) {
    const reason = ctx.signal.aborted ? 'closed' : answer.response === 1 ? 'user' : 'failure';
    audit({ vm: vm.name, portal: 'FileChooser', request: requestId, decision: 'cancel', reason, grant: null, asked });
    return { response: answer.response === 0 ? 2 : answer.response, results: {} };
  }
  const write = grantsWrite(params.kind, answer.results);
  const refuse = (why: string) => {
    log.warn({ why }, 'refused what the dialog returned; nothing was granted');
    audit({ vm: vm.name, portal: 'FileChooser', request: requestId, decision: 'error', reason: 'failure', grant: null, asked: { ...asked, refused: why } });
    return { response: 2 as const, results: {} };
  };
  const paths = chosenPaths(params.kind, answer.results.uris ?? [], params.options.files);
  if (typeof paths === 'string') return refuse(paths);
  const ungrantable = paths.map(whyNotGrantable).find((why) => why !== undefined);
  if (ungrantable) return refuse(ungrantable);
  let writable: Promise<{ vm: string; path: string }[]> | undefined;
  const writableFolders = () => (writable ??= vmWritableFolders(docs, []));
  for (const p of paths) {
    const planted = await plantedLinkProblem(p, writableFolders);
    if (planted) return refuse(planted);
  }
  let grants: Grant[];
  try {
    grants = await grantChosen(paths, write, deps);
  } catch (err) {
    return refuse(err instanceof GrantRefused ? err.message : `the document store refused the grant: ${(err as Error).message}`);
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
  const back = request.answerForGuest(answer.results);
  const results = params.kind === 'open' ? { ...back, uris, writable: write } : { ...back, uris };
  return { response: 0, results };
}

/** The host half: the one protocol method, each request with an id of its own for the log and the audit trail. */
export const fileChooserHost: HostHalf = (deps) => ({
  methods: {
    // The connection has validated `params` against OpenDialog.params already.
    [OpenDialog.name]: (params, ctx) => {
      const requestId = deps.nextRequestId();
      return handleOpenDialog(params as Params<typeof OpenDialog>, ctx, { ...deps, requestId, log: deps.log.child({ portal: 'FileChooser', request: requestId }) });
    },
  },
});
