import type { Bus } from '../../src/dbus/bus.js';
import { callPortalRequest } from '../../src/dbus/portal-request.js';
import { optionsToVardict, resultsFromVardict } from './options.js';
import { METHOD_OF_KIND, type DialogKind, type FileChooserOptions, type FileChooserResults, type Response } from './schema.js';

/** Show the host desktop's own file dialog through the host's portal frontend. */
export async function showHostFileDialog(
  bus: Bus,
  kind: DialogKind,
  title: string,
  options: FileChooserOptions,
  signal: AbortSignal,
): Promise<{ response: Response; results: FileChooserResults }> {
  const answer = await callPortalRequest(bus, {
    interface: 'org.freedesktop.portal.FileChooser',
    member: METHOD_OF_KIND[kind],
    signature: 'ssa{sv}',
    args: ['', title],
    options: optionsToVardict(kind, options),
    signal,
  });
  const response = answer.response === 0 || answer.response === 1 ? answer.response : 2;
  return { response, results: response === 0 ? resultsFromVardict(answer.results) : {} };
}
