import { describe, expect, it } from 'vitest';
import { SettingsChanged, SettingsReadAll, namespaceMatches, settingFromHost } from './schema.js';
import { settingsFrom } from './host.js';

describe('Settings: what crosses to a VM', () => {
  it('takes the allow-listed keys with their own types', () => {
    expect(settingFromHost('org.freedesktop.appearance', 'color-scheme', 1)).toEqual({ namespace: 'org.freedesktop.appearance', key: 'color-scheme', value: 1 });
    expect(settingFromHost('org.freedesktop.appearance', 'accent-color', [0.2, 0.4, 0.9])?.value).toEqual([0.2, 0.4, 0.9]);
    expect(settingFromHost('org.gnome.desktop.interface', 'font-name', 'Cantarell 11')?.value).toBe('Cantarell 11');
    expect(settingFromHost('org.gnome.desktop.interface', 'text-scaling-factor', 1.25)?.value).toBe(1.25);
  });

  it('drops every other key, and allowed keys of the wrong type or shape', () => {
    expect(settingFromHost('org.gnome.desktop.interface', 'clock-format', '24h')).toBeUndefined();
    expect(settingFromHost('org.gnome.desktop.background', 'picture-uri', 'file:///home/alice/me.jpg')).toBeUndefined();
    expect(settingFromHost('org.freedesktop.appearance', 'constructor', 1)).toBeUndefined();
    expect(settingFromHost('org.freedesktop.appearance', 'color-scheme', 'prefer-dark')).toBeUndefined();
    expect(settingFromHost('org.freedesktop.appearance', 'color-scheme', -1)).toBeUndefined();
    expect(settingFromHost('org.freedesktop.appearance', 'accent-color', [1, 2])).toBeUndefined();
    expect(settingFromHost('org.gnome.desktop.interface', 'font-name', 'Sans\n11')).toBeUndefined();
    expect(settingFromHost('org.gnome.desktop.interface', 'font-name', 'x'.repeat(129))).toBeUndefined();
  });

  it('checks the wire in both directions with the same table, saying which key and why', () => {
    const bad = SettingsChanged.params.safeParse({ namespace: 'org.gnome.desktop.interface', key: 'gtk-theme', value: 'Evil' });
    expect(bad.success).toBe(false);
    expect(bad.error?.issues[0]?.message).toBe('org.gnome.desktop.interface gtk-theme is not a setting that crosses to a VM');
    const wrong = SettingsReadAll.result.safeParse({ settings: [{ namespace: 'org.freedesktop.appearance', key: 'contrast', value: 'high' }] });
    expect(wrong.error?.issues[0]?.message).toMatch(/^org\.freedesktop\.appearance contrast must be of type u/);
  });

  it('keeps only the asked namespaces of a host ReadAll answer', () => {
    const v = (value: unknown) => ({ signature: '?', value });
    const host = {
      'org.freedesktop.appearance': { 'color-scheme': v(1), 'reduced-motion': v(1) },
      'org.gnome.desktop.interface': { 'font-name': v('Cantarell 11'), 'clock-format': v('24h') },
    };
    expect(settingsFrom(host, ['org.freedesktop.appearance', 'org.gnome.desktop.interface'])).toEqual([
      { namespace: 'org.freedesktop.appearance', key: 'color-scheme', value: 1 },
      { namespace: 'org.gnome.desktop.interface', key: 'font-name', value: 'Cantarell 11' },
    ]);
    expect(settingsFrom(host, ['org.freedesktop.appearance'])).toEqual([{ namespace: 'org.freedesktop.appearance', key: 'color-scheme', value: 1 }]);
  });

  it('matches ReadAll namespace patterns as xdg-desktop-portal does', () => {
    expect(namespaceMatches('org.freedesktop.appearance', [])).toBe(true);
    expect(namespaceMatches('org.freedesktop.appearance', [''])).toBe(true);
    expect(namespaceMatches('org.freedesktop.appearance', ['org.freedesktop.*'])).toBe(true);
    expect(namespaceMatches('org.gnome.desktop.interface', ['org.freedesktop.*'])).toBe(false);
    expect(namespaceMatches('org.freedesktop.appearance', ['org.freedesktop.appearance'])).toBe(true);
    expect(namespaceMatches('org.freedesktop.appearance', ['org.freedesktop'])).toBe(false);
  });
});
