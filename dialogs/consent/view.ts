import GLib from 'gi://GLib';
import Gtk from 'gi://Gtk?version=4.0';
import Pango from 'gi://Pango?version=1.0';
import Adw from 'gi://Adw?version=1';

import { LIMITS, type ConsentAnswer, type ConsentDecision, type ConsentRequest } from '../../src/consent/contract.js';
import { guestText } from '../../src/guest-input.js';

/**
 * The consent window. Written for GTK 4.8 / libadwaita 1.2 (Debian 12): Adw.MessageDialog, not the
 * newer AlertDialog, and CSS loaded with load_from_data, which every GTK 4 has.
 */

// A key press already on its way (the user was typing elsewhere) must not land on an allow button
// the instant the window appears, so the allow responses are armed only after this delay.
const ARM_DELAY_MS = 600;
// Keeps a guest's long text from pushing the buttons off screen; it scrolls instead.
const GUEST_TEXT_MAX_HEIGHT = 160;
const GUEST_TEXT_MAX_LINES = 200;

export interface ViewOptions {
  /** Test-only: print every label's text to stderr once the window is mapped and armed. */
  dumpWidgets: boolean;
  onAnswer(answer: ConsentAnswer): void;
}

export function windowTitle(request: ConsentRequest): string {
  return `Permission request from ${guestText(request.vm.label, { max: LIMITS.vmLabel })}`;
}

/** Black or white, whichever reads better on the VM's colour. */
function inkFor(color: string): string {
  const channel = (i: number) => parseInt(color.slice(i, i + 2), 16) / 255;
  const luminance = 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
  return luminance > 0.5 ? '#000000' : '#ffffff';
}

function vmSwatch(request: ConsentRequest): Gtk.Widget {
  const { vm } = request;
  const swatch = new Gtk.Label({ label: guestText(vm.label, { max: LIMITS.vmLabel }), use_markup: false, halign: Gtk.Align.START });
  // The colour was checked against #rrggbb by the schema, so it cannot carry CSS of its own. The
  // provider is attached to this one widget, so nothing else in the dialog can be recoloured.
  const css = `label { background-color: ${vm.color}; color: ${inkFor(vm.color)}; padding: 8px 18px; border-radius: 6px; font-weight: bold; }`;
  const provider = new Gtk.CssProvider();
  loadCss(provider, css);
  swatch.get_style_context().add_provider(provider, Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION);

  const row = new Gtk.Box({ orientation: Gtk.Orientation.HORIZONTAL, spacing: 10 });
  row.append(swatch);
  row.append(new Gtk.Label({ label: `VM “${vm.name}”`, use_markup: false, css_classes: ['dim-label'] }));
  return row;
}

/** GTK 4.8's load_from_data takes only the text; 4.12 added a length argument and load_from_string. */
function loadCss(provider: Gtk.CssProvider, css: string): void {
  if (Gtk.get_minor_version() >= 12) provider.load_from_string(css);
  else (provider.load_from_data as unknown as (this: Gtk.CssProvider, data: string) => void).call(provider, css);
}

function plainLabel(text: string, extra: Partial<Gtk.Label.ConstructorProps> = {}): Gtk.Label {
  return new Gtk.Label({
    label: text,
    use_markup: false,
    use_underline: false,
    selectable: false,
    wrap: true,
    wrap_mode: Pango.WrapMode.WORD_CHAR,
    xalign: 0,
    ...extra,
  });
}

function detailsGrid(request: ConsentRequest): Gtk.Widget | undefined {
  if (request.details.length === 0) return undefined;
  const grid = new Gtk.Grid({ column_spacing: 12, row_spacing: 4 });
  request.details.forEach((detail, row) => {
    grid.attach(plainLabel(guestText(detail.label, { max: LIMITS.detailLabel }), { xalign: 1, valign: Gtk.Align.START, css_classes: ['dim-label'] }), 0, row, 1, 1);
    grid.attach(plainLabel(guestText(detail.value, { max: LIMITS.detailValue }), { width_chars: 20, max_width_chars: 40 }), 1, row, 1, 1);
  });
  return grid;
}

function guestTextSection(request: ConsentRequest): Gtk.Widget | undefined {
  if (request.guestText.length === 0) return undefined;
  const box = new Gtk.Box({ orientation: Gtk.Orientation.VERTICAL, spacing: 6 });
  box.append(plainLabel('Text from the VM (unverified):', { css_classes: ['heading'] }));
  for (const item of request.guestText) {
    box.append(plainLabel(`${guestText(item.label, { max: LIMITS.guestLabel })}:`, { css_classes: ['dim-label'] }));
    const text = plainLabel(guestText(item.text, { max: LIMITS.guestText, multiline: true, maxLines: GUEST_TEXT_MAX_LINES }), {
      // A minimum width as well as a maximum: wrapping labels otherwise ask for one character's
      // width, and the window's height is then measured at that width and comes out far too tall.
      width_chars: 30,
      max_width_chars: 50,
      css_classes: ['monospace'],
      margin_start: 8,
      margin_end: 8,
      margin_top: 6,
      margin_bottom: 6,
    });
    const scroller = new Gtk.ScrolledWindow({
      child: text,
      hscrollbar_policy: Gtk.PolicyType.NEVER,
      propagate_natural_height: true,
      max_content_height: GUEST_TEXT_MAX_HEIGHT,
      // Focus starts on the buttons, not here, so Tab walks Deny → Allow once → Always allow.
      focusable: false,
    });
    box.append(new Gtk.Frame({ child: scroller }));
  }
  return box;
}

function countdownText(seconds: number): string {
  return `Denies automatically in ${seconds} s`;
}

const CLOSE_RESPONSE = 'close';
const RESPONSES: Record<string, ConsentDecision> = {
  deny: 'deny',
  'allow-once': 'allow-once',
  'allow-always': 'allow-always',
};

interface LabelDump {
  label: string;
  text: string;
  useMarkup: boolean;
}

function collectLabels(widget: Gtk.Widget, out: LabelDump[]): void {
  if (widget instanceof Gtk.Label) {
    out.push({ label: widget.get_label(), text: widget.get_text(), useMarkup: widget.get_use_markup() });
  }
  for (let child = widget.get_first_child(); child; child = child.get_next_sibling()) collectLabels(child, out);
}

function describeFocus(window: Gtk.Window): string | null {
  const focus = window.get_focus();
  if (!focus) return null;
  if (focus instanceof Gtk.Button) return focus.get_label();
  return focus.constructor.name;
}

function dumpWidgets(dialog: Adw.MessageDialog): void {
  // Idle, so the dump reflects the window after the arming redraw, as the user can now use it.
  GLib.idle_add(GLib.PRIORITY_LOW, () => {
    const labels: LabelDump[] = [];
    collectLabels(dialog, labels);
    const dump = { title: dialog.get_title(), mapped: dialog.get_mapped(), focus: describeFocus(dialog), labels };
    printerr(`consent-dialog-dump: ${JSON.stringify(dump)}`);
    return GLib.SOURCE_REMOVE;
  });
}

export function showConsentWindow(request: ConsentRequest, opts: ViewOptions): void {
  const allowIds = request.allowAlways ? ['allow-once', 'allow-always'] : ['allow-once'];
  const dialog = new Adw.MessageDialog({
    heading: guestText(request.summary, { max: LIMITS.summary }),
    heading_use_markup: false,
    body_use_markup: false,
    resizable: false,
  });
  // Set after the heading: libadwaita 1.2 copies the heading into the window title.
  dialog.set_title(windowTitle(request));
  dialog.add_response('deny', 'Deny');
  dialog.add_response('allow-once', 'Allow once');
  if (request.allowAlways) dialog.add_response('allow-always', 'Always allow');
  // Deny is what Return does when no button has focus. Escape and the window manager's close
  // also deny, through a response id of their own so the answer can say "closed" rather than "user".
  dialog.set_default_response('deny');
  dialog.set_close_response(CLOSE_RESPONSE);
  for (const id of allowIds) dialog.set_response_enabled(id, false);

  const content = new Gtk.Box({ orientation: Gtk.Orientation.VERTICAL, spacing: 14 });
  content.append(vmSwatch(request));
  const details = detailsGrid(request);
  if (details) content.append(details);
  const guest = guestTextSection(request);
  if (guest) content.append(guest);
  const countdown = plainLabel(countdownText(request.timeoutSeconds), { css_classes: ['dim-label', 'caption'] });
  content.append(countdown);
  dialog.set_extra_child(content);

  let answered = false;
  const timers = new Set<number>();
  const addTimer = (ms: number, tick: () => boolean) => {
    const id: number = GLib.timeout_add(GLib.PRIORITY_DEFAULT, ms, () => {
      const again = tick();
      if (!again) timers.delete(id);
      return again;
    });
    timers.add(id);
  };
  const finish = (decision: ConsentDecision, reason: ConsentAnswer['reason']) => {
    if (answered) return;
    answered = true;
    for (const id of timers) GLib.source_remove(id);
    timers.clear();
    opts.onAnswer({ version: 1, decision, reason });
  };

  dialog.connect('response', (_dialog: Adw.MessageDialog, id: string) => {
    if (id === CLOSE_RESPONSE) finish('deny', 'closed');
    else finish(RESPONSES[id] ?? 'deny', 'user');
  });

  const deadline = GLib.get_monotonic_time() + request.timeoutSeconds * 1_000_000;
  addTimer(250, () => {
    const left = Math.ceil((deadline - GLib.get_monotonic_time()) / 1_000_000);
    if (left <= 0) {
      finish('deny', 'timeout');
      return GLib.SOURCE_REMOVE;
    }
    countdown.set_label(countdownText(left));
    return GLib.SOURCE_CONTINUE;
  });

  // Armed from the moment the window is on screen, not from when it was built.
  let armed = false;
  dialog.connect('map', () => {
    if (armed) return;
    armed = true;
    addTimer(ARM_DELAY_MS, () => {
      for (const id of allowIds) dialog.set_response_enabled(id, true);
      if (opts.dumpWidgets) dumpWidgets(dialog);
      return GLib.SOURCE_REMOVE;
    });
  });

  dialog.present();
}
