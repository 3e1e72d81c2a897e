import type { MethodDescriptor } from '../src/protocol/methods.js';
import { SESSION_METHODS } from '../src/protocol/session.js';
import { FILE_CHOOSER_METHODS } from './file-chooser/schema.js';

/**
 * Every portal in one flat table: its name, the impl.portal interface the
 * guest half exports, and the protocol methods both halves share. The halves
 * themselves are registered in portals/guest.ts and portals/host.ts, so the
 * guest backend never loads host code (it starts by D-Bus activation, often
 * in a VM without KVM, where every module read costs).
 */
export const PORTALS = [
  { name: 'FileChooser', interface: 'org.freedesktop.impl.portal.FileChooser', methods: FILE_CHOOSER_METHODS },
] as const satisfies readonly { name: string; interface: string; methods: readonly MethodDescriptor[] }[];

export type PortalName = (typeof PORTALS)[number]['name'];

export const ALL_METHODS: readonly MethodDescriptor[] = [...SESSION_METHODS, ...PORTALS.flatMap((p) => p.methods)];
