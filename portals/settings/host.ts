import type { Bus } from '../../src/dbus/bus.js';
import { audit } from '../../src/host/audit.js';
import { describeRow } from '../../src/policy/model.js';
import type { HostPortalDeps, PortalHandlers } from '../portal.js';
import { SETTINGS_NAMESPACES, SettingsChanged, SettingsReadAll, settingFromHost, type Setting, type SettingsNamespace } from './schema.js';

/**
 * The host half of Settings: reads the host's own Settings portal (the
 * desktop's backend behind it), keeps the allow-listed keys, and forwards each
 * later change of one to the VM while its policy lets it see that namespace.
 */
const DESKTOP = 'org.freedesktop.portal.Desktop';
const PATH = '/org/freedesktop/portal/desktop';
const IFACE = 'org.freedesktop.portal.Settings';

export function settingsHost(deps: HostPortalDeps): PortalHandlers {
  const watch = new ChangeWatch(deps.hostBus, (s) => void forward(s));

  /** The namespaces this VM may see now, and the deny rows that hide the others. */
  async function visible(): Promise<{ allowed: SettingsNamespace[]; denied: { namespace: string; rule?: string }[] }> {
    const allowed: SettingsNamespace[] = [];
    const denied: { namespace: string; rule?: string }[] = [];
    for (const namespace of SETTINGS_NAMESPACES) {
      const d = await deps.policy.decision('Settings', namespace, deps.vm);
      if (d.verdict === 'deny') denied.push({ namespace, ...(d.row ? { rule: describeRow(d.row) } : {}) });
      else allowed.push(namespace);
    }
    return { allowed, denied };
  }

  async function forward(s: Setting): Promise<void> {
    const d = await deps.policy.decision('Settings', s.namespace, deps.vm);
    if (d.verdict === 'deny') return;
    if (deps.notify(SettingsChanged, s)) deps.log.debug({ portal: 'Settings', namespace: s.namespace, key: s.key }, 'forwarded a host setting change');
  }

  return {
    methods: {
      [SettingsReadAll.name]: async () => {
        const request = deps.nextRequestId();
        const { allowed, denied } = await visible();
        for (const d of denied) audit({ vm: deps.vm.name, portal: 'Settings', request, decision: 'deny', reason: 'policy', grant: null, asked: { namespace: d.namespace }, ...(d.rule ? { rule: d.rule } : {}) });
        if (allowed.length === 0) return { settings: [] };
        // The call first: it starts the host's portal if it is not running yet, and the watch needs its owner.
        const [all] = await deps.hostBus.call({ destination: DESKTOP, path: PATH, interface: IFACE, member: 'ReadAll', signature: 'as', body: [allowed], timeoutMs: 10_000 });
        await watch.ensure();
        const settings = settingsFrom(all, allowed);
        audit({ vm: deps.vm.name, portal: 'Settings', request, decision: 'allow', reason: 'policy', grant: null, asked: { namespaces: allowed, keys: settings.length } });
        return { settings };
      },
    },
  };
}

/** The allowed settings of a host ReadAll answer (a{sa{sv}}), in the namespaces asked. */
export function settingsFrom(all: unknown, namespaces: readonly string[]): Setting[] {
  const out: Setting[] = [];
  if (!all || typeof all !== 'object') return out;
  for (const [namespace, keys] of Object.entries(all as Record<string, unknown>)) {
    if (!namespaces.includes(namespace) || !keys || typeof keys !== 'object') continue;
    for (const [key, value] of Object.entries(keys as Record<string, { value?: unknown }>)) {
      const s = settingFromHost(namespace, key, value?.value);
      if (s) out.push(s);
    }
  }
  return out;
}

/**
 * The host Settings portal's SettingChanged, for one VM: subscribed on the
 * first read (a VM that never reads costs nothing), and again when the
 * portal's owner changed (it was restarted).
 */
class ChangeWatch {
  private owner: string | undefined;
  private unsubscribe: (() => Promise<void>) | undefined;

  constructor(
    private readonly bus: Bus,
    private readonly onChange: (s: Setting) => void,
  ) {}

  async ensure(): Promise<void> {
    const owner = await this.bus.nameOwner(DESKTOP);
    if (!owner || owner === this.owner) return;
    await this.unsubscribe?.();
    this.owner = owner;
    this.unsubscribe = await this.bus.subscribe({ sender: owner, path: PATH, interface: IFACE, member: 'SettingChanged' }, (body) => {
      const [namespace, key, value] = body as [string, string, { value?: unknown } | undefined];
      const s = settingFromHost(String(namespace), String(key), value?.value);
      if (s) this.onChange(s);
    });
  }
}
