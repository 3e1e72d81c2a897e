import type { ConsentDetail, GuestText } from '../../src/consent/contract.js';
import { guestText } from '../../src/guest-input.js';
import { isLocalHost, type CheckedUri } from './uri.js';

/**
 * What the consent dialog shows for a link. The summary and details are the
 * host's words around what it parsed itself: the scheme and the ASCII
 * (punycode) host, so a homograph such as "аpple.com" with a Cyrillic "а"
 * reads "xn--pple-43d.com". The whole link, whose path and query the VM
 * chose, is shown only as labelled guest text, capped.
 */
export const SHOWN_URI_CHARS = 200;

export interface LinkQuestion {
  summary: string;
  details: ConsentDetail[];
  guestText: GuestText[];
}

/** `where` is "the host" or the target VM's label. */
export function linkQuestion(vmLabel: string, uri: CheckedUri, where: string): LinkQuestion {
  const inWords = where === 'the host' ? 'on the host' : `in ${where}`;
  const summary =
    uri.scheme === 'mailto' ? `${vmLabel} wants to start an email ${inWords}` : `${vmLabel} wants to open a link to ${hostForSummary(uri.host)} ${inWords}`;
  const details: ConsentDetail[] = [];
  if (uri.scheme === 'mailto') details.push({ label: 'Kind', value: 'an email (mailto:)' });
  else {
    details.push({ label: 'Site', value: uri.host });
    details.push({ label: 'Kind', value: uri.scheme === 'https' ? 'web page (https)' : 'web page (http, not encrypted)' });
    if (isLocalHost(uri.host)) details.push({ label: 'Note', value: 'this address is on this computer, not on the internet' });
  }
  details.push({ label: 'Opens in', value: where });
  return { summary, details, guestText: [{ label: 'The full link (its path chosen by the VM)', text: guestText(uri.href, { max: SHOWN_URI_CHARS }) }] };
}

/**
 * A long host cut from the left: what decides where a link goes is its end
 * ("bank.example.com.evil.example" belongs to evil.example). The Site detail
 * shows it whole.
 */
export const SUMMARY_HOST_CHARS = 100;
export function hostForSummary(host: string): string {
  return host.length > SUMMARY_HOST_CHARS ? `…${host.slice(host.length - (SUMMARY_HOST_CHARS - 1))}` : host;
}
