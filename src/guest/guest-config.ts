import { readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { describeIssues } from '../zod-issues.js';

/** /etc/xdp-vm/guest.json: the guest's own settings, written by install-guest and read by root services. */
export const GUEST_CONFIG_PATH = '/etc/xdp-vm/guest.json';

export const GuestConfig = z
  .object({
    mountPoint: z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path').default('/run/xdp-vm/doc'),
    tag: z.string().regex(/^[A-Za-z0-9_.-]{1,36}$/).default('xdp-vm-doc'),
    transport: z.string().optional(),
  })
  .strict();
export type GuestConfig = z.infer<typeof GuestConfig>;

export function loadGuestConfig(file = GUEST_CONFIG_PATH): GuestConfig {
  let raw: unknown = {};
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`${file}: ${(err as Error).message}`);
  }
  const parsed = GuestConfig.safeParse(raw);
  if (!parsed.success) throw new Error(`${file}: ${describeIssues(parsed.error)}`);
  return parsed.data;
}
