import type { z } from 'zod';
import { guestLogText } from './guest-input.js';

const MAX_ISSUES = 5;
const MAX_PATH_SEGMENTS = 6;
const MAX_SEGMENT_CHARS = 40;
const MAX_KEYS_NAMED = 3;
const MAX_MESSAGE_CHARS = 160;
/** The whole description: it ends up in err frames (1,024 characters at most) and in log lines. */
export const MAX_DESCRIPTION_CHARS = 600;

/**
 * A zod error as one line naming the failing paths, for error frames, logs and stderr.
 *
 * What failed validation is usually a guest's: record keys, unknown keys and
 * zod's own messages quote it. Every piece is cleaned and capped as guest
 * text, so a description is safe to log and to send back, whoever wrote the input.
 */
export function describeIssues(error: z.ZodError): string {
  const parts = error.issues.slice(0, MAX_ISSUES).map((i) => `${describePath(i.path)}: ${describeMessage(i)}`);
  const more = error.issues.length - MAX_ISSUES;
  if (more > 0) parts.push(`and ${more} more issue${more === 1 ? '' : 's'}`);
  return guestLogText(parts.join('; '), MAX_DESCRIPTION_CHARS);
}

function describePath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(root)';
  const shown = path.slice(0, MAX_PATH_SEGMENTS).map((p) => (typeof p === 'number' ? String(p) : guestLogText(String(p), MAX_SEGMENT_CHARS)));
  return `${shown.join('.')}${path.length > MAX_PATH_SEGMENTS ? '.…' : ''}`;
}

function describeMessage(issue: z.core.$ZodIssue): string {
  // zod lists every unknown key in full; name a few, capped, and count the rest.
  if (issue.code === 'unrecognized_keys') {
    const named = issue.keys.slice(0, MAX_KEYS_NAMED).map((k) => `"${guestLogText(k, MAX_SEGMENT_CHARS)}"`);
    const rest = issue.keys.length - named.length;
    return `unrecognized key${issue.keys.length === 1 ? '' : 's'} ${named.join(', ')}${rest > 0 ? ` and ${rest} more` : ''}`;
  }
  return guestLogText(issue.message, MAX_MESSAGE_CHARS);
}
