import { z } from 'zod';
import { defineMethod, defineNotification } from '../../src/protocol/methods.js';

/**
 * What of the host's look crosses to a VM: an allow list of Settings keys,
 * each with the one D-Bus type it may have. Nothing else crosses, in either
 * direction: the host half drops every other key before sending, and the
 * guest half checks each value against this table again on receipt.
 *
 * - org.freedesktop.appearance: the keys xdg-desktop-portal documents, read
 *   by libadwaita, GTK 4, Qt 6 and Electron.
 * - org.gnome.desktop.interface: the colour scheme and the fonts and text
 *   scaling GTK reads through the Settings portal when it runs under one.
 */
export type SettingType = 'u' | 'd' | 's' | '(ddd)';

export const SETTINGS_ALLOWED = {
  'org.freedesktop.appearance': { 'color-scheme': 'u', 'accent-color': '(ddd)', contrast: 'u' },
  'org.gnome.desktop.interface': {
    'color-scheme': 's',
    'font-name': 's',
    'document-font-name': 's',
    'monospace-font-name': 's',
    'text-scaling-factor': 'd',
    'font-antialiasing': 's',
    'font-hinting': 's',
    'font-rgba-order': 's',
  },
} as const satisfies Record<string, Record<string, SettingType>>;

export type SettingsNamespace = keyof typeof SETTINGS_ALLOWED;
export const SETTINGS_NAMESPACES = Object.keys(SETTINGS_ALLOWED) as [SettingsNamespace, ...SettingsNamespace[]];

/** The type an allowed key must have, or undefined for a key that never crosses. */
export function allowedType(namespace: string, key: string): SettingType | undefined {
  const keys = (SETTINGS_ALLOWED as Record<string, Record<string, SettingType>>)[namespace];
  return keys && Object.hasOwn(keys, key) ? keys[key] : undefined;
}

/** A font name or an enum nick: short, printable, one line. */
const MAX_TEXT = 128;

const VALUE_OF: Record<SettingType, z.ZodType> = {
  u: z.number().int().min(0).max(0xffffffff),
  d: z.number().finite(),
  s: z.string().max(MAX_TEXT).regex(/^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$/u, 'a setting\'s text is one printable line'),
  '(ddd)': z.tuple([z.number().finite(), z.number().finite(), z.number().finite()]),
};

/** One setting on the wire: an allowed key, and a value of its type. */
export const Setting = z
  .object({ namespace: z.string().max(64), key: z.string().max(64), value: z.union([z.number(), z.string(), z.array(z.number()).max(3)]) })
  .strict()
  .superRefine((s, ctx) => {
    const type = allowedType(s.namespace, s.key);
    if (!type) return void ctx.addIssue({ code: 'custom', message: `${s.namespace} ${s.key} is not a setting that crosses to a VM` });
    const r = VALUE_OF[type].safeParse(s.value);
    if (!r.success) ctx.addIssue({ code: 'custom', message: `${s.namespace} ${s.key} must be of type ${type}: ${r.error.issues[0]?.message ?? 'wrong type'}` });
  });
export type Setting = z.infer<typeof Setting>;

const MAX_SETTINGS = Object.values(SETTINGS_ALLOWED).reduce((n, keys) => n + Object.keys(keys).length, 0);

/** The guest asks for the host's allowed settings (when the guest's frontend first reads one, and after each reconnect). */
export const SettingsReadAll = defineMethod({
  name: 'settings.readAll',
  direction: 'guest-to-host',
  params: z.object({}).strict(),
  result: z.object({ settings: z.array(Setting).max(MAX_SETTINGS) }).strict(),
});

/** One allowed setting changed on the host; only sent to a VM that has read them. */
export const SettingsChanged = defineNotification({
  name: 'settings.changed',
  direction: 'host-to-guest',
  params: Setting,
});

export const SETTINGS_METHODS = [SettingsReadAll, SettingsChanged] as const;

/**
 * A host value as D-Bus gave it (dbus-next: numbers, strings, arrays for
 * structs) as one wire setting, or undefined when it is not allowed or not of
 * its type.
 */
export function settingFromHost(namespace: string, key: string, value: unknown): Setting | undefined {
  const r = Setting.safeParse({ namespace, key, value });
  return r.success ? r.data : undefined;
}

/**
 * Does `namespace` match one of ReadAll's patterns? xdg-desktop-portal's
 * rule: an empty list or an empty pattern matches all, a pattern ending in
 * `*` matches by prefix, any other pattern must be equal.
 */
export function namespaceMatches(namespace: string, patterns: readonly string[]): boolean {
  if (patterns.length === 0) return true;
  return patterns.some((p) => p === '' || (p.endsWith('*') ? namespace.startsWith(p.slice(0, -1)) : namespace === p));
}
