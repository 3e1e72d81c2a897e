import { PortalError, variant, type Bus, type TypedValue } from '../../src/dbus/bus.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import type { HostLink } from '../../src/guest/host-link.js';
import type { Logger } from '../../src/log.js';
import type { NotificationHandler } from '../../src/protocol/methods.js';
import { BACKEND_PATH } from '../file-chooser/guest.js';
import { allowedType, namespaceMatches, Setting, SettingsChanged, SettingsReadAll } from './schema.js';

/**
 * The guest half of Settings: org.freedesktop.impl.portal.Settings for the
 * guest's stock frontend, answered from a copy of the host's allowed
 * settings. The copy is read from the host on first use and again after
 * every reconnect; the host's changes arrive as notifications and leave as
 * SettingChanged, which the guest's frontend passes on to its apps.
 */
const IMPL_VERSION = 1;

export function exportSettings(bus: Bus, host: HostLink, log: Logger): () => void {
  const iface = loadInterface('org.freedesktop.impl.portal.Settings');
  const slog = log.child({ portal: 'Settings' });
  const values = new Map<string, Setting>();
  const id = (s: Pick<Setting, 'namespace' | 'key'>) => `${s.namespace}\n${s.key}`;
  let loaded: Promise<void> | undefined;

  const emit = (s: Setting) => bus.emitSignal(BACKEND_PATH, iface, 'SettingChanged', [s.namespace, s.key, asVariant(s)]);

  /** Take the host's settings; after a reconnect, say what changed meanwhile. */
  const take = (settings: readonly Setting[], announce: boolean) => {
    const fresh = new Map(settings.map((s) => [id(s), s]));
    for (const [k, s] of fresh) {
      const before = values.get(k);
      values.set(k, s);
      if (announce && JSON.stringify(before?.value) !== JSON.stringify(s.value)) emit(s);
    }
    for (const k of [...values.keys()]) if (!fresh.has(k)) values.delete(k);
  };

  const load = (announce = false): Promise<void> =>
    (loaded ??= host.request(SettingsReadAll, {}).then(
      (r) => {
        take(r.settings, announce);
        slog.debug({ settings: values.size }, 'read the host\'s settings');
      },
      (err: Error) => {
        loaded = undefined; // the next read asks again
        slog.warn({ err: err.message }, 'could not read the host\'s settings');
        throw new PortalError('Failed', `the host's settings are not available: ${err.message}`);
      },
    ));

  const onChanged: NotificationHandler = (params) => {
    const s = params as Setting; // the link checked it against SettingsChanged's schema: an allowed key, of its type
    values.set(id(s), s);
    emit(s);
  };
  host.onNotification(SettingsChanged.name, onChanged);

  // After a reconnect (a daemon restart, a host suspend), read again if we had read: changes may have been missed.
  const onUp = () => {
    if (!loaded) return;
    loaded = undefined;
    load(true).catch(() => undefined);
  };
  host.on('up', onUp);

  const unexport = bus.export(
    BACKEND_PATH,
    iface,
    {
      ReadAll: async (args) => {
        const [patterns] = args as [string[]];
        await load();
        const out: Record<string, Record<string, TypedValue>> = {};
        for (const s of values.values()) {
          if (!namespaceMatches(s.namespace, patterns)) continue;
          (out[s.namespace] ??= {})[s.key] = asVariant(s);
        }
        return [out];
      },
      Read: async (args) => {
        const [namespace, key] = args as [string, string];
        await load();
        const s = values.get(id({ namespace, key }));
        if (!s) throw new PortalError('NotFound', 'Requested setting not found');
        return [asVariant(s)];
      },
    },
    { version: () => variant('u', IMPL_VERSION) },
  );
  return () => {
    unexport();
    host.offNotification(SettingsChanged.name, onChanged);
    host.off('up', onUp);
  };
}

function asVariant(s: Setting): TypedValue {
  return variant(allowedType(s.namespace, s.key)!, s.value);
}
