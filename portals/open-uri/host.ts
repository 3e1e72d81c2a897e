import { OPEN_URI_HOST } from '../../src/config/schema.js';
import { callPortalRequest } from '../../src/dbus/portal-request.js';
import { guestLogText } from '../../src/guest-input.js';
import { audit, type AuditReason } from '../../src/host/audit.js';
import type { ConsentResult } from '../../src/host/consent.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import type { Params, ResultOf } from '../../src/protocol/methods.js';
import type { HostPortalDeps, PortalHandlers } from '../portal.js';
import { linkQuestion } from './question.js';
import { OpenUriLaunch, OpenUriOpen } from './schema.js';
import { checkUri, type CheckedUri } from './uri.js';

/**
 * The host half of OpenURI: one link from a VM. Where it would open comes
 * from the config's openUri table (the host unless that names a VM); whether
 * it opens at all from the consent path (a row per scheme, else the dialog).
 * Then the host's own org.freedesktop.portal.OpenURI opens it, which runs
 * the host's default handler, or the target VM's guest is asked to launch
 * its own. Audit lines and logs name the scheme, host and target, never the
 * path or query (they can carry what the user typed or a session token).
 */
const OPEN_URI_IFACE = 'org.freedesktop.portal.OpenURI';
/** How long the host's portal may take to start a handler (its own app chooser, if it shows one, included). */
const HOST_OPEN_MS = 60_000;

type Target = { kind: 'host' } | { kind: 'vm'; name: string; label: string };
type Answer = Extract<ResultOf<typeof OpenUriOpen>, { opened: unknown }>;

export function openUriHost(deps: HostPortalDeps): PortalHandlers {
  return {
    methods: {
      [OpenUriOpen.name]: async (params, ctx) => openLink(deps, (params as Params<typeof OpenUriOpen>).uri, ctx.signal),
    },
  };
}

async function openLink(deps: HostPortalDeps, raw: string, signal: AbortSignal): Promise<Answer> {
  const request = deps.nextRequestId();
  // The link schema already made it canonical; parse it once more for its parts.
  const checked = checkUri(raw);
  if (!checked.ok) throw new ProtocolError('invalid-params', checked.problem);
  const uri = checked.uri;
  const target = targetOf(deps, uri);
  const facts = { scheme: uri.scheme, host: uri.host, target: target.kind === 'host' ? OPEN_URI_HOST : target.name };
  const log = deps.log.child({ portal: 'OpenURI', request, ...facts });
  const refuse = (decision: 'deny' | 'error', reason: AuditReason, message: string, code: 'denied' | 'failed' = 'failed'): never => {
    audit({ vm: deps.vm.name, portal: 'OpenURI', request, decision, reason, grant: null, asked: { ...facts, refused: message } });
    log.info({ decision, reason }, `link not opened: ${message}`);
    throw new ProtocolError(code, message);
  };

  // A target VM that is not running cannot take it: say so before asking the user anything.
  if (target.kind === 'vm' && !deps.otherVm(target.name)?.guest) refuse('error', 'failure', notRunning(target.name));

  const question = linkQuestion(deps.vm.label, uri, target.kind === 'host' ? 'the host' : target.label);
  const consent = await deps.consent({ vm: deps.vm, portal: 'OpenURI', arg: uri.scheme, requestId: request, ...question }, signal);
  if (!consent.allowed) {
    // requestConsent wrote the decision's audit line, with its row or the user's answer.
    log.info({ reason: consent.reason }, 'link refused');
    throw new ProtocolError('denied', refusal(consent, uri));
  }

  let answer: Answer;
  try {
    answer = target.kind === 'host' ? await openOnHost(deps, uri, signal) : await launchInVm(deps, target, uri, signal);
  } catch (err) {
    return refuse('error', 'failure', (err as Error).message);
  }
  audit({ vm: deps.vm.name, portal: 'OpenURI', request, decision: 'allow', reason: consent.reason, grant: null, asked: { ...facts, opened: answer.opened } });
  log.info({ opened: answer.opened }, 'link opened');
  return answer;
}

/** The config's target for this VM and scheme; a target that is not a configured VM (the config check forbids it) falls back to the host. */
function targetOf(deps: HostPortalDeps, uri: CheckedUri): Target {
  const name = deps.vm.openUri?.[uri.scheme];
  if (!name || name === OPEN_URI_HOST || name === deps.vm.name) return { kind: 'host' };
  const other = deps.otherVm(name);
  return other ? { kind: 'vm', name, label: other.label } : { kind: 'host' };
}

const notRunning = (vm: string) => `VM ${vm} is not running: links from this VM open there, so this one was not opened`;

function refusal(consent: ConsentResult, uri: CheckedUri): string {
  if (consent.reason === 'policy') return `a policy row refuses ${uri.scheme} links from this VM (xdp-vm permissions on the host)`;
  if (consent.reason === 'timeout') return 'nobody answered the host\'s question in time; the link was not opened';
  return 'the user did not allow the link to open';
}

/** The host's own OpenURI portal: it runs the host's default handler for the scheme, as for any app. */
async function openOnHost(deps: HostPortalDeps, uri: CheckedUri, signal: AbortSignal): Promise<Answer> {
  const { response } = await callPortalRequest(deps.hostBus, {
    interface: OPEN_URI_IFACE,
    member: 'OpenURI',
    signature: 'ssa{sv}',
    args: ['', uri.href],
    options: {},
    signal,
    timeoutMs: HOST_OPEN_MS,
  });
  if (response !== 0) throw new Error(response === 1 ? 'the host\'s link handler was not chosen' : 'the host could not open the link (its portal found no handler, or the handler failed)');
  return { opened: 'host', where: 'the host' };
}

async function launchInVm(deps: HostPortalDeps, target: Extract<Target, { kind: 'vm' }>, uri: CheckedUri, signal: AbortSignal): Promise<Answer> {
  // Looked up again: the dialog may have been up for a while.
  const guest = deps.otherVm(target.name)?.guest;
  if (!guest) throw new Error(notRunning(target.name));
  const r = await guest.request(OpenUriLaunch, { uri: uri.href }, { signal }).catch((err: Error) => {
    // The target VM's words: cleaned before they reach this VM or a log.
    throw new Error(`VM ${target.name} did not open the link: ${guestLogText(err.message, 200)}`);
  });
  deps.log.debug({ portal: 'OpenURI', target: target.name, handler: guestLogText(r.handler, 80) }, 'the target VM launched its handler');
  return { opened: 'vm', where: target.name };
}
