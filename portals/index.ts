import type { MethodDescriptor, NotificationDescriptor } from '../src/protocol/methods.js';
import { SESSION_METHODS } from '../src/protocol/session.js';
import { FILE_CHOOSER } from './file-chooser/index.js';
import { NETWORK } from './network/index.js';
import { NOTIFICATION } from './notification/index.js';
import { OPEN_URI } from './open-uri/index.js';
import { SETTINGS } from './settings/index.js';
import { USB } from './usb/index.js';

/**
 * Every portal, one row each. Adding a portal is its folder and one line
 * here; vm.portal, the guest install, the policy tables, the CLI and the
 * daemon all read this list.
 */
export const PORTALS = [FILE_CHOOSER, SETTINGS, USB, NETWORK, NOTIFICATION, OPEN_URI] as const;

export type Portal = (typeof PORTALS)[number];
export type PortalName = Portal['name'];

export const PORTAL_NAMES = PORTALS.map((p) => p.name) as [PortalName, ...PortalName[]];

export function portalByName(name: PortalName): Portal {
  return PORTALS.find((p) => p.name === name)!;
}

export const ALL_METHODS: readonly (MethodDescriptor | NotificationDescriptor)[] = [...SESSION_METHODS, ...PORTALS.flatMap((p) => p.methods)];

/** Every impl.portal interface our guest backend serves. */
export const GUEST_INTERFACES: readonly string[] = PORTALS.flatMap((p) => p.interfaces);
