import net from 'node:net';

/**
 * The unprivileged side of the mount agent's socket, used by the session
 * backend when the host asks for a mount or an unmount. Kept apart from the
 * agent so the backend does not load what the agent needs to run mount(8).
 */
export const MOUNT_AGENT_SOCKET = '/run/xdp-vm/mount-agent.sock';

/** Ask the agent (from the unprivileged session backend). */
export function askMountAgent(command: 'mount' | 'unmount' | 'status' | `mount-folder ${string}` | `unmount-folder ${string}` | `usb-${string}`, socket = MOUNT_AGENT_SOCKET, timeoutMs = 8000): Promise<{ ok: boolean; detail: string }> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    let reply = '';
    const timer = setTimeout(() => (c.destroy(), resolve({ ok: false, detail: 'the mount agent did not answer' })), timeoutMs);
    c.setEncoding('utf8');
    c.on('data', (d: string) => (reply += d));
    c.on('end', () => {
      clearTimeout(timer);
      const m = /^(ok|error) ?(.*)$/.exec(reply.trim());
      resolve({ ok: m?.[1] === 'ok', detail: m?.[2] ?? reply.trim() });
    });
    c.on('error', (err) => {
      clearTimeout(timer);
      resolve({ ok: false, detail: `no mount agent at ${socket}: ${err.message}` });
    });
    c.write(`${command}\n`);
  });
}
