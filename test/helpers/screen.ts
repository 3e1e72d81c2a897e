import { setTimeout as sleep } from 'node:timers/promises';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';

/**
 * What a person at an X display does and sees, for tests that drive real
 * dialogs: keystrokes and typing through xdotool, a screenshot of the whole
 * screen (ImageMagick's import), and OCR of part of it (tesseract).
 */
export interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

export class Screen {
  constructor(readonly display: string) {}

  private run(tool: 'xdotool' | 'xwininfo' | 'import' | 'convert' | 'tesseract', args: string[]): Promise<string> {
    return runProgram(requireProgram(tool), args, { env: { DISPLAY: this.display }, timeoutMs: 30_000 }).then((r) => r.stdout);
  }

  /** Key chords in order (xdotool names: "ctrl+l", "Tab", "space", "Return"), to the focused window. */
  async keys(windowId: string, ...keys: string[]): Promise<void> {
    await this.run('xdotool', ['windowfocus', windowId]);
    await this.run('xdotool', ['key', '--delay', '80', ...keys]);
  }

  /** Types text as keystrokes, as a person would. */
  async type(windowId: string, text: string): Promise<void> {
    await this.run('xdotool', ['windowfocus', windowId]);
    await this.run('xdotool', ['type', '--delay', '20', text]);
  }

  async geometry(windowId: string): Promise<Box> {
    const info = await this.run('xwininfo', ['-id', windowId]);
    const num = (name: string) => Number(new RegExp(`${name}:\\s+(-?\\d+)`).exec(info)?.[1]);
    return { x: num('Absolute upper-left X'), y: num('Absolute upper-left Y'), width: num('Width'), height: num('Height') };
  }

  /** Whether a viewable window with exactly this title is on the screen. */
  async hasWindow(title: string): Promise<boolean> {
    const found = await this.run('xdotool', ['search', '--onlyvisible', '--name', `^${title}$`]).catch(() => '');
    return found.trim() !== '';
  }

  async screenshot(file: string): Promise<void> {
    await this.run('import', ['-window', 'root', `png24:${file}`]);
  }

  /**
   * Text in `box` of a screenshot, read twice: as it is, and in black and
   * white, because tesseract misses grey text on grey (an insensitive button)
   * in the first and white text on blue (the default button) in the second.
   * Scaled up first: tesseract reads UI-sized text poorly. The crops are kept
   * next to `cropFile`.
   */
  async read(shot: string, box: Box, cropFile: string, opts: { scale?: number } = {}): Promise<string> {
    const crop = ['-crop', `${box.width}x${box.height}+${box.x}+${box.y}`, '+repage'];
    const scale = ['-resize', `${opts.scale ?? 200}%`];
    const mono = cropFile.replace(/\.png$/, '-mono.png');
    await this.run('convert', [shot, ...crop, ...scale, cropFile]);
    await this.run('convert', [shot, ...crop, '-colorspace', 'Gray', '-threshold', '75%', ...scale, mono]);
    const texts = await Promise.all([cropFile, mono].map((f) => this.run('tesseract', [f, 'stdout', '--psm', '6'])));
    return texts.map((t) => t.trim()).join('\n');
  }

  /** Waits until no viewable window has this title. */
  async windowGone(title: string, timeoutMs = 15_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (await this.hasWindow(title)) {
      if (Date.now() > until) throw new Error(`the window "${title}" is still on ${this.display} after ${timeoutMs} ms`);
      await sleep(50);
    }
  }
}
