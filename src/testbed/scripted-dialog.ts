import { Bus, type MethodImpl } from '../dbus/bus.js';
import { loadInterface } from '../dbus/interfaces.js';
import { asVardict, bytesToString, typed } from '../dbus/values.js';

/**
 * The only fake in the integration tier: the human. A FileChooser backend on
 * the host bus, called by the real host xdg-desktop-portal, that records what
 * it was asked and answers the way a user would, as the test scripts it.
 */
export const SCRIPTED_BUS_NAME = 'org.freedesktop.impl.portal.desktop.scripted';
export const SCRIPTED_PORTAL_FILE = `[portal]\nDBusName=${SCRIPTED_BUS_NAME}\nInterfaces=org.freedesktop.impl.portal.FileChooser;\nUseIn=scripted\n`;

export type DialogMethod = 'OpenFile' | 'SaveFile' | 'SaveFiles';

export interface DialogCall {
  method: DialogMethod;
  handle: string;
  appId: string;
  title: string;
  /** Options as plain values; bytestrings as text. */
  options: Record<string, unknown>;
  closed: boolean;
}

export interface UserAnswer {
  response: 0 | 1 | 2;
  uris?: string[];
  choices?: [string, string][];
  current_filter?: [string, [number, string][]];
  writable?: boolean;
}

/** What the user does with a dialog: answer it, or leave it open until it is closed. */
export type UserAction = UserAnswer | 'leave-open';
export type User = (call: DialogCall) => UserAction | Promise<UserAction>;

function plain(options: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(asVardict(options))) {
    if (v.signature === 'ay') out[k] = bytesToString(v.value);
    else if (v.signature === 'aay') out[k] = (v.value as Buffer[]).map((b) => bytesToString(b));
    else out[k] = v.value;
  }
  return out;
}

export class ScriptedDialog {
  readonly calls: DialogCall[] = [];
  private user: User = () => ({ response: 1 });
  private waiters: ((c: DialogCall) => void)[] = [];

  private constructor(private readonly bus: Bus) {}

  static async start(address: string): Promise<ScriptedDialog> {
    const bus = await Bus.connect(address);
    const dialog = new ScriptedDialog(bus);
    const impl = (method: DialogMethod): MethodImpl => (args) => dialog.handle(method, args);
    bus.export('/org/freedesktop/portal/desktop', loadInterface('org.freedesktop.impl.portal.FileChooser'), {
      OpenFile: impl('OpenFile'),
      SaveFile: impl('SaveFile'),
      SaveFiles: impl('SaveFiles'),
    });
    await bus.requestName(SCRIPTED_BUS_NAME);
    return dialog;
  }

  /** Script the user. */
  behave(user: User): void {
    this.user = user;
  }

  nextCall(timeoutMs = 15_000): Promise<DialogCall> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the host dialog was never shown')), timeoutMs);
      this.waiters.push((c) => (clearTimeout(timer), resolve(c)));
    });
  }

  stop(): void {
    this.bus.close();
  }

  private async handle(method: DialogMethod, args: unknown[]): Promise<unknown[]> {
    const [handle, appId, , title, options] = args as [string, string, string, string, unknown];
    const call: DialogCall = { method, handle, appId, title, options: plain(options), closed: false };
    this.calls.push(call);
    let onClose!: () => void;
    const closed = new Promise<void>((resolve) => (onClose = resolve));
    const unexport = this.bus.export(handle, loadInterface('org.freedesktop.impl.portal.Request'), {
      Close: () => {
        call.closed = true;
        onClose();
        return [];
      },
    });
    for (const w of this.waiters.splice(0)) w(call);
    try {
      const action = await this.user(call);
      if (action === 'leave-open') {
        await closed;
        return [2, {}];
      }
      const results: Record<string, unknown> = {};
      if (action.uris) results.uris = typed('as', action.uris);
      if (action.choices) results.choices = typed('a(ss)', action.choices);
      if (action.current_filter) results.current_filter = typed('(sa(us))', action.current_filter);
      if (action.writable !== undefined) results.writable = typed('b', action.writable);
      return [action.response, results];
    } finally {
      unexport();
    }
  }
}
