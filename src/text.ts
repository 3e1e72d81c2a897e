/**
 * Guest text on its way to a host dialog: strip what could disguise it
 * (control characters, bidirectional overrides, zero-width characters, line
 * breaks) and cap its length. Labelling it with the VM is the caller's job.
 */
// C0/C1 controls, zero-width and bidi-control characters, line/paragraph separators, BOM.
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]/g;

export function sanitizeGuestText(text: string, maxChars = 200): string {
  const clean = text.replace(INVISIBLE, ' ').replace(/\s+/g, ' ').trim();
  const chars = [...clean];
  return chars.length > maxChars ? `${chars.slice(0, maxChars - 1).join('')}…` : clean;
}
