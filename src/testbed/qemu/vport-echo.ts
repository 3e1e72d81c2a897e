import { findPort, openPort } from '../../guest/vport.js';

/**
 * Run in an e2e guest (`node dist/src/testbed/qemu/vport-echo.js NAME`):
 * finds the hot-plugged virtio-serial port NAME with the guest module
 * src/guest/vport.ts, opens it and sends back every byte it reads, through
 * pipe(), so a host that writes faster than the guest echoes is held back
 * at each hop rather than buffered. Each step is one line on stdout for
 * the test to wait on: FOUND, OPEN, then CLOSED with the bytes echoed (or
 * ERROR), when the host hangs up or the port is unplugged.
 */
const name = process.argv[2];
if (!name) {
  console.error('usage: vport-echo.js PORT-NAME');
  process.exit(2);
}
try {
  const device = await findPort(name, { timeoutMs: 30_000 });
  console.log(`FOUND ${device}`);
  const port = await openPort(device, { hostTimeoutMs: 60_000 });
  console.log(`OPEN ${device}`);
  let bytes = 0;
  port.on('data', (chunk: Buffer) => (bytes += chunk.length));
  port.on('error', (err: NodeJS.ErrnoException) => console.log(`ERROR ${err.code ?? ''} ${err.message}`));
  port.on('close', () => console.log(`CLOSED ${bytes}`));
  port.pipe(port);
} catch (err) {
  console.log(`ERROR ${(err as NodeJS.ErrnoException).code ?? ''} ${(err as Error).message}`);
  process.exitCode = 1;
}
