import { requireProgram } from '../../src/deps.js';
import { startService, type Service } from '../../src/exec.js';

/** A private X server. -displayfd lets Xvfb pick a free display, so parallel runs cannot collide. */
export interface Xvfb {
  display: string;
  stop(): Promise<void>;
}

export async function startXvfb(opts: { screen?: string; timeoutMs?: number } = {}): Promise<Xvfb> {
  let service: Service | undefined;
  const number = new Promise<string>((resolve) => {
    service = startService('Xvfb', requireProgram('Xvfb'), ['-displayfd', '1', '-screen', '0', opts.screen ?? '1280x800x24', '-nolisten', 'tcp', '-noreset'], {
      onStdoutLine: (l) => resolve(l.trim()),
    });
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Xvfb did not report a display: ${service?.stderr ?? ''}`)), opts.timeoutMs ?? 15_000);
  });
  try {
    const display = `:${await Promise.race([number, timeout])}`;
    return { display, stop: async () => void (await service?.stop()) };
  } catch (err) {
    await service?.stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
