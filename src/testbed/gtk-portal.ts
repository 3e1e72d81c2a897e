import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ActivatableService } from './private-bus.js';

/**
 * The host session's FileChooser backend as a desktop has it: Debian's
 * xdg-desktop-portal-gtk, registered by its own gtk.portal file (UseIn=gnome)
 * and started by D-Bus activation on an X display, with GNOME's header-bar
 * dialogs or GTK's classic ones.
 */
export interface GtkDialogSpec {
  /** The X display the dialogs open on. */
  display: string;
  /** GNOME draws dialogs with header bars (its XSettings turn gtk-dialogs-use-header on); default true. */
  headerBars?: boolean;
  /**
   * The session's GSettings in a file (GLib's keyfile backend, under
   * XDG_CONFIG_HOME) rather than in each process's memory, so `gsettings set`
   * from another process reaches the backend, as dconf does on a desktop.
   */
  sharedSettings?: boolean;
}

const GTK_BACKEND = '/usr/libexec/xdg-desktop-portal-gtk';
const GTK_PORTAL_FILE = '/usr/share/xdg-desktop-portal/portals/gtk.portal';

/** Installs gtk.portal and GTK's settings into a host session; returns the session's extra environment and the backend to activate. */
export function gtkHostBackend(spec: GtkDialogSpec, dirs: { portals: string; configHome: string }): { env: Record<string, string>; service: ActivatableService } {
  for (const f of [GTK_BACKEND, GTK_PORTAL_FILE]) {
    if (!existsSync(f)) throw new Error(`${f} is missing; install it with: sudo apt-get install xdg-desktop-portal-gtk`);
  }
  copyFileSync(GTK_PORTAL_FILE, path.join(dirs.portals, 'gtk.portal'));
  // Without a settings daemon GTK 3 reads this file; GNOME's XSettings say the same.
  const settings = path.join(dirs.configHome, 'gtk-3.0', 'settings.ini');
  mkdirSync(path.dirname(settings), { recursive: true });
  writeFileSync(settings, `[Settings]\ngtk-dialogs-use-header=${spec.headerBars === false ? 'false' : 'true'}\n`);
  return {
    // gtk.portal says UseIn=gnome; the frontend matches it case-insensitively.
    env: { XDG_CURRENT_DESKTOP: 'GNOME', DISPLAY: spec.display, GDK_BACKEND: 'x11', NO_AT_BRIDGE: '1', LANG: 'C.UTF-8', ...(spec.sharedSettings ? { GSETTINGS_BACKEND: 'keyfile' } : {}) },
    service: { name: 'org.freedesktop.impl.portal.desktop.gtk', exec: GTK_BACKEND },
  };
}
