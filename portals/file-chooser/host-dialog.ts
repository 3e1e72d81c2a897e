import { BackendCallError, callBackendRequest } from '../../src/dbus/backend-request.js';
import { PortalError, type Bus } from '../../src/dbus/bus.js';
import { chooseBackend, describeFrontend, type BackendChoice } from '../../src/dbus/portal-backend.js';
import { callPortalRequest, portalOwner, type PortalAnswer } from '../../src/dbus/portal-request.js';
import { childLogger } from '../../src/log.js';
import { frontendOptionProblem } from './frontend-checks.js';
import { optionsToVardict, resultsFromVardict } from './options.js';
import { METHOD_OF_KIND, type DialogKind, type FileChooserOptions, type FileChooserResults, type Response } from './schema.js';

/**
 * The host desktop's own file dialog, reached one of two ways:
 *
 * - OpenFile goes straight to the FileChooser backend the host's
 *   xdg-desktop-portal itself uses (src/dbus/portal-backend.ts picks it by
 *   the frontend's own rules). Only that way does the user's "Open files
 *   read-only" choice reach us: the frontend passes a backend's `writable` on
 *   to sandboxed callers only, and our daemon is not sandboxed. The frontend's
 *   option checks are made here instead (frontend-checks.ts).
 * - SaveFile and SaveFiles, and OpenFile whenever we cannot be sure which
 *   backend the frontend would use, go through the frontend as any app's
 *   request would. A save grants write either way, and the frontend also
 *   applies the desktop's lockdown ("disable save to disk") to saves.
 *
 * XDP_VM_HOST_DIALOG_ROUTE=frontend sends everything through the frontend.
 */
const log = childLogger({ component: 'host-dialog' });
const BACKEND_IFACE = 'org.freedesktop.impl.portal.FileChooser';

export type DialogRoute = { via: 'frontend'; why: string } | { via: 'backend'; dbusName: string; why: string };

/** One answer per running frontend: it read its configuration when it started, so a new instance may choose differently. */
const chosen = new WeakMap<Bus, { owner: string; choice: Promise<BackendChoice> }>();

async function backendOf(bus: Bus): Promise<BackendChoice> {
  const owner = await portalOwner(bus);
  const known = chosen.get(bus);
  if (known?.owner === owner) return known.choice;
  const choice = (async (): Promise<BackendChoice> => {
    const facts = await describeFrontend(bus, owner);
    return 'unsure' in facts ? { kind: 'unsure', why: facts.unsure } : chooseBackend(BACKEND_IFACE, facts);
  })().catch((err: Error): BackendChoice => ({ kind: 'unsure', why: `could not work out the frontend's backend: ${err.message}` }));
  chosen.set(bus, { owner, choice });
  const c = await choice;
  if (c.kind === 'backend') log.info({ backend: c.dbusName, portal: c.portalFile, rules: c.rules, how: c.how }, 'host OpenFile dialogs go straight to the desktop\'s FileChooser backend, so "Open files read-only" is honoured');
  else log.warn({ why: c.why }, 'host OpenFile dialogs go through xdg-desktop-portal, which keeps the user\'s read-only choice from us: opened files are granted read-only');
  return c;
}

export async function hostDialogRoute(bus: Bus, kind: DialogKind): Promise<DialogRoute> {
  if (process.env.XDP_VM_HOST_DIALOG_ROUTE === 'frontend') return { via: 'frontend', why: 'XDP_VM_HOST_DIALOG_ROUTE=frontend' };
  if (kind !== 'open') return { via: 'frontend', why: 'saves grant write either way, and the frontend applies the desktop lockdown to them' };
  const c = await backendOf(bus);
  return c.kind === 'backend' ? { via: 'backend', dbusName: c.dbusName, why: `${c.portalFile}: ${c.how}` } : { via: 'frontend', why: c.why };
}

/** Show the host desktop's own file dialog. */
export async function showHostFileDialog(
  bus: Bus,
  kind: DialogKind,
  title: string,
  options: FileChooserOptions,
  signal: AbortSignal,
): Promise<{ response: Response; results: FileChooserResults }> {
  const route = await hostDialogRoute(bus, kind);
  let answer: PortalAnswer;
  if (route.via === 'backend') {
    const problem = frontendOptionProblem(kind, options);
    if (problem) throw new PortalError('InvalidArgument', `invalid options: ${problem}`);
    try {
      answer = await callBackendRequest(bus, {
        destination: route.dbusName,
        interface: BACKEND_IFACE,
        member: METHOD_OF_KIND[kind],
        // app_id and parent_window as the frontend passes them for an unsandboxed caller without a window.
        args: ['', '', title],
        options: optionsToVardict(kind, options),
        signal,
      });
    } catch (err) {
      if (!(err instanceof BackendCallError)) throw err;
      // The frontend answers 2 when its backend call fails; so do we.
      log.warn({ backend: route.dbusName, err: err.message }, 'the FileChooser backend failed the call');
      return { response: 2, results: {} };
    }
  } else {
    answer = await callPortalRequest(bus, {
      interface: 'org.freedesktop.portal.FileChooser',
      member: METHOD_OF_KIND[kind],
      signature: 'ssa{sv}',
      args: ['', title],
      options: optionsToVardict(kind, options),
      signal,
    });
  }
  const response = answer.response === 0 || answer.response === 1 ? answer.response : 2;
  return { response, results: response === 0 ? resultsFromVardict(answer.results) : {} };
}
