import { z } from 'zod';
import { defineMethod } from './methods.js';

/** Methods of the link itself, not of any portal. */
export const Ping = defineMethod({
  name: 'session.ping',
  direction: 'guest-to-host',
  params: z.object({ seq: z.number().int().min(0).max(2 ** 53 - 1) }).strict(),
  result: z.object({ seq: z.number().int().min(0) }).strict(),
});

export const SESSION_METHODS = [Ping] as const;
