import { setTimeout as sleep } from 'node:timers/promises';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';

/**
 * Waits until a window with exactly this title is viewable (GTK names the window before it maps it).
 * Polls rather than `xdotool search --sync`, whose half-second poll would blur timing tests.
 */
export async function waitForWindow(display: string, title: string, timeoutMs = 15_000): Promise<string> {
  const env = { env: { DISPLAY: display } };
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const found = await runProgram(requireProgram('xdotool'), ['search', '--onlyvisible', '--name', `^${title}$`], env).catch(() => undefined);
    const id = found?.stdout.trim().split('\n')[0];
    if (id) {
      const info = await runProgram(requireProgram('xwininfo'), ['-id', id], env).catch(() => undefined);
      if (info?.stdout.includes('Map State: IsViewable')) return id;
    }
    await sleep(20);
  }
  throw new Error(`no viewable window titled "${title}" appeared on ${display} within ${timeoutMs} ms`);
}

export async function pressKeys(display: string, windowId: string, ...keys: string[]): Promise<void> {
  const env = { env: { DISPLAY: display }, timeoutMs: 20_000 };
  await runProgram(requireProgram('xdotool'), ['windowfocus', windowId], env);
  await runProgram(requireProgram('xdotool'), ['key', '--delay', '50', ...keys], env);
}
