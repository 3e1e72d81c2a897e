import type { HostLink } from '../../src/guest/host-link.js';
import { askMountAgent } from '../../src/guest/mount-agent-client.js';
import { ProtocolError } from '../../src/protocol/messages.js';
import type { Params } from '../../src/protocol/methods.js';
import type { UsbipChannel } from '../../src/usb/usbip.js';
import { UsbipDevices, UsbipExport, UsbipImport, UsbipUnexport, UsbipUnimport } from './usbip-schema.js';

/**
 * The guest backend's part in USB/IP: the host's requests go to the root
 * agent (src/guest/usb-agent.ts), which alone may touch usbip-host and
 * vhci-hcd. The backend holds the link; the agent does the work. Handled
 * whatever portals are served: a provider VM exports its devices even when
 * its own apps are served no Usb portal.
 */
const AGENT_MS = 30_000;

async function ask(command: `usb-${string}`): Promise<string> {
  const r = await askMountAgent(command, undefined, AGENT_MS);
  if (!r.ok) throw new ProtocolError('failed', `the VM's root agent: ${r.detail.slice(0, 300)}`);
  return r.detail;
}

/** The agent's word for a channel (src/guest/usb-agent.ts): the port's name, or vsock:PORT. */
function channelWord(c: UsbipChannel): string {
  return 'vsockPort' in c ? `vsock:${c.vsockPort}` : c.port;
}

export function handleUsbipRequests(link: HostLink): void {
  link.handle(UsbipDevices.name, async () => {
    const json = await ask('usb-devices');
    try {
      return { devices: JSON.parse(json) as unknown[] };
    } catch {
      throw new ProtocolError('failed', 'the VM\'s root agent sent no device list');
    }
  });
  link.handle(UsbipExport.name, async (params) => {
    const p = params as Params<typeof UsbipExport>;
    const [devid, speed] = (await ask(`usb-export ${p.busid} ${channelWord(p)}`)).split(' ').map(Number);
    return { devid, speed };
  });
  link.handle(UsbipUnexport.name, async (params) => {
    await ask(`usb-unexport ${(params as Params<typeof UsbipUnexport>).busid}`);
    return {};
  });
  link.handle(UsbipImport.name, async (params) => {
    const p = params as Params<typeof UsbipImport>;
    return { vhciPort: Number(await ask(`usb-import ${channelWord(p)} ${p.devid} ${p.speed}`)) };
  });
  link.handle(UsbipUnimport.name, async (params) => {
    await ask(`usb-unimport ${(params as Params<typeof UsbipUnimport>).vhciPort}`);
    return {};
  });
}
