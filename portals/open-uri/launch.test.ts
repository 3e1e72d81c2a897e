import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OPEN_ON_HOST_DESKTOP_ID } from './handler.js';
import { findDesktopFile, parseGioMime, pickHandler } from './launch.js';

/** `LC_ALL=C gio mime x-scheme-handler/https` as GLib 2.74 prints it. */
const GIO_OURS_DEFAULT = `Default application for ?x-scheme-handler/https?: ${OPEN_ON_HOST_DESKTOP_ID}
Registered applications:
\t${OPEN_ON_HOST_DESKTOP_ID}
\tfirefox-esr.desktop
Recommended applications:
\tfirefox-esr.desktop
\tchromium.desktop
`;

describe('OpenURI in a target VM: which handler it launches', () => {
  it('reads gio mime: the default, then the registered and recommended ones in order', () => {
    expect(parseGioMime(GIO_OURS_DEFAULT)).toEqual({ default: OPEN_ON_HOST_DESKTOP_ID, others: [OPEN_ON_HOST_DESKTOP_ID, 'firefox-esr.desktop', 'chromium.desktop'] });
    expect(parseGioMime('No default applications for ?x-scheme-handler/mailto?\nNo registered applications\nNo recommended applications\n')).toEqual({ default: undefined, others: [] });
  });

  it('never launches "Open on host", which would send the link straight back', () => {
    expect(pickHandler(parseGioMime(GIO_OURS_DEFAULT))).toBe('firefox-esr.desktop');
    expect(pickHandler({ default: 'chromium.desktop', others: ['firefox-esr.desktop'] })).toBe('chromium.desktop');
    expect(pickHandler({ default: OPEN_ON_HOST_DESKTOP_ID, others: [OPEN_ON_HOST_DESKTOP_ID] })).toBeUndefined();
  });

  it('takes no id that is not a plain desktop file name', () => {
    expect(parseGioMime('Default application for ?x?: ../../bin/sh\nRegistered applications:\n\t/etc/passwd\n').default).toBeUndefined();
    expect(parseGioMime('Registered applications:\n\t../evil.desktop\n').others).toEqual([]);
  });

  it('finds a desktop file by the spec\'s rules: data home first, "-" standing for a subfolder', () => {
    const root = mkdtempSync(path.join(tmpdir(), 'xdp-vm-apps-'));
    const home = path.join(root, 'home');
    const sys = path.join(root, 'sys');
    for (const d of [`${home}/applications`, `${sys}/applications/kde`]) mkdirSync(d, { recursive: true });
    writeFileSync(`${home}/applications/browser.desktop`, '');
    writeFileSync(`${sys}/applications/browser.desktop`, '');
    writeFileSync(`${sys}/applications/kde/konqueror-web.desktop`, '');
    const env = { XDG_DATA_HOME: home, XDG_DATA_DIRS: `relative/dir:${sys}` };
    expect(findDesktopFile('browser.desktop', env)).toBe(`${home}/applications/browser.desktop`);
    expect(findDesktopFile('kde-konqueror-web.desktop', env)).toBe(`${sys}/applications/kde/konqueror-web.desktop`);
    expect(findDesktopFile('missing.desktop', env)).toBeUndefined();
  });
});
