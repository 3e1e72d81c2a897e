import type { Bus, MethodImpl } from '../../src/dbus/bus.js';
import { loadInterface } from '../../src/dbus/interfaces.js';
import { asVardict } from '../../src/dbus/values.js';
import type { HostLink } from '../../src/guest/host-link.js';
import { withRequestHandle } from '../../src/guest/request-handle.js';
import type { Logger } from '../../src/log.js';
import { hop } from '../../src/trace.js';
import { optionsFromVardict, resultsToVardict } from './options.js';
import { OpenDialog, type DialogKind } from './schema.js';

/**
 * The guest half of FileChooser: org.freedesktop.impl.portal.FileChooser for
 * the guest's stock frontend. It owns nothing: it validates, forwards to the
 * host and hands back the host's answer. Any failure is response 2.
 */
export const BACKEND_PATH = '/org/freedesktop/portal/desktop';

export function exportFileChooser(bus: Bus, host: HostLink, log: Logger): () => void {
  const forward =
    (kind: DialogKind): MethodImpl =>
    async (args, ctx) => {
      const [handle, appId, , title, rawOptions] = args as [string, string, string, string, unknown];
      const { options, dropped } = optionsFromVardict(kind, asVardict(rawOptions));
      const rlog = log.child({ portal: 'FileChooser', handle });
      hop(rlog, 'guest.received');
      if (dropped.length) rlog.debug({ dropped }, 'dropped options outside the allow-list');
      return withRequestHandle(bus, handle, ctx.sender, async (signal) => {
        try {
          const answer = await host.request(OpenDialog, { kind, title, appId, options }, { signal });
          hop(rlog, 'guest.answered', { response: answer.response });
          return [answer.response, resultsToVardict(answer.results)];
        } catch (err) {
          if (signal.aborted) rlog.info('closed by the frontend; the host dialog was closed too');
          else rlog.warn({ err: (err as Error).message }, 'the host could not answer; responding 2');
          return [2, {}];
        }
      });
    };
  return bus.export(BACKEND_PATH, loadInterface('org.freedesktop.impl.portal.FileChooser'), {
    OpenFile: forward('open'),
    SaveFile: forward('save'),
    SaveFiles: forward('save-files'),
  });
}
