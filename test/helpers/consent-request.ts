import type { ConsentRequestInput } from '../../src/consent/contract.js';

/** Markup a guest might send, hoping a dialog renders it. */
export const HOSTILE_TEXT = '<b>bold</b> & <span foreground="red">x</span>';

/** The documented example request: a VM asking for a USB device, with text from the VM. */
export function consentRequest(overrides: Partial<ConsentRequestInput> = {}): ConsentRequestInput {
  return {
    version: 1,
    vm: { name: 'work', label: 'Work', color: '#3465a4' },
    summary: 'work wants to use the USB device "YubiKey 5" (1050:0407)',
    details: [{ label: 'Device', value: 'Yubico YubiKey OTP+FIDO+CCID' }],
    guestText: [{ label: 'Reason given by the VM', text: HOSTILE_TEXT }],
    timeoutSeconds: 60,
    allowAlways: true,
    ...overrides,
  };
}
