import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateSync } from 'node:zlib';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { consentRequest, HOSTILE_TEXT as HOSTILE } from '../helpers/consent-request.js';

import type { ConsentOutcome, ConsentRequestInput } from '../../src/consent/contract.js';
import { ConsentRequest } from '../../src/consent/contract.js';
import { showConsentDialog } from '../../src/consent/gjs-dialog.js';
import { requireProgram } from '../../src/deps.js';
import { runProgram } from '../../src/exec.js';
import { startXvfb, type Xvfb } from '../helpers/xvfb.js';
import { pressKeys as pressKeysOn, waitForWindow as waitForWindowOn } from '../helpers/x11.js';

/**
 * The real GJS dialog on a private Xvfb: it must map under its fixed title, paint the VM's colour,
 * show guest markup as literal text, and answer Escape, Return and its own timeout correctly.
 * Missing programs fail the suite with the Debian package to install; nothing is skipped.
 */

const repo = fileURLToPath(new URL('../..', import.meta.url));
const results = path.join(repo, 'test-results', 'consent-dialog');
const SWATCH = { hex: '#3465a4', rgb: [0x34, 0x65, 0xa4] } as const;
// Past the dialog's arming delay (600 ms) plus a redraw.
const SETTLE_MS = 1000;

const tools = {} as Record<'gjs' | 'xdotool' | 'xwininfo' | 'import' | 'convert' | 'tesseract', string>;
let xvfb: Xvfb | undefined;
let display = '';
let scratch = '';
let distDir = '';

const quiet = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const onDisplay = { env: { DISPLAY: '' } };

function request(overrides: Partial<ConsentRequestInput> = {}) {
  return ConsentRequest.parse(consentRequest({ vm: { name: 'work', label: 'Work', color: SWATCH.hex }, timeoutSeconds: 30, ...overrides }));
}

interface Shown {
  title: string;
  abort: AbortController;
  outcome: Promise<ConsentOutcome>;
  stderr: () => string;
}

// Dialogs still up when a test ends (because it failed) are killed before the next one starts.
const live = new Set<{ abort: AbortController; outcome: Promise<ConsentOutcome> }>();
let shownCount = 0;

/** Each dialog gets its own VM label, hence its own title: a leftover window can never be mistaken for it. */
function show(overrides: Partial<ConsentRequestInput> = {}, dialogArgs: string[] = [], label = `Work ${++shownCount}`): Shown {
  let stderr = '';
  const abort = new AbortController();
  const outcome = showConsentDialog(request({ vm: { name: 'work', label, color: SWATCH.hex }, ...overrides }), {
    display: { x11: display },
    distDir,
    gjsPath: tools.gjs,
    baseEnv: {},
    // UTF-8 so the widget dump survives GLib's charset conversion; cairo so colours are exact.
    env: { HOME: scratch, LANG: 'C.UTF-8', GSK_RENDERER: 'cairo', GSETTINGS_BACKEND: 'memory', NO_AT_BRIDGE: '1' },
    dialogArgs,
    signal: abort.signal,
    onStderr: (s) => (stderr = s),
    logger: quiet,
  });
  const entry = { abort, outcome };
  live.add(entry);
  void outcome.finally(() => live.delete(entry));
  return { title: `Permission request from ${label}`, abort, outcome, stderr: () => stderr };
}

async function x(tool: keyof typeof tools, args: string[]): Promise<string> {
  return (await runProgram(tools[tool], args, { env: onDisplay.env, timeoutMs: 20_000 })).stdout;
}

const waitForWindow = (title: string, timeoutMs?: number) => waitForWindowOn(display, title, timeoutMs);
const pressKeys = (windowId: string, ...keys: string[]) => pressKeysOn(display, windowId, ...keys);

interface Image {
  width: number;
  height: number;
  channels: number;
  pixels: Buffer;
}

/** Just enough PNG to read ImageMagick's png24/png32 output: 8-bit RGB(A), not interlaced. */
function decodePng(file: string): Image {
  const buf = readFileSync(file);
  if (buf.readUInt32BE(0) !== 0x89504e47) throw new Error(`${file} is not a PNG`);
  let width = 0, height = 0, depth = 0, colorType = 0, interlace = 0;
  const idat: Buffer[] = [];
  for (let off = 8; off < buf.length; ) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      [width, height] = [data.readUInt32BE(0), data.readUInt32BE(4)];
      [depth, colorType, interlace] = [data.readUInt8(8), data.readUInt8(9), data.readUInt8(12)];
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  if (depth !== 8 || interlace !== 0 || (colorType !== 2 && colorType !== 6)) {
    throw new Error(`unsupported PNG (depth ${depth}, colour type ${colorType}, interlace ${interlace})`);
  }
  const channels = colorType === 6 ? 4 : 3;
  const stride = width * channels;
  const raw = inflateSync(Buffer.concat(idat));
  const px = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)] ?? 0;
    for (let i = 0; i < stride; i++) {
      const v = raw[y * (stride + 1) + 1 + i] ?? 0;
      const a = i >= channels ? (px[y * stride + i - channels] ?? 0) : 0;
      const b = y > 0 ? (px[(y - 1) * stride + i] ?? 0) : 0;
      const c = i >= channels && y > 0 ? (px[(y - 1) * stride + i - channels] ?? 0) : 0;
      const paeth = () => {
        const p = a + b - c;
        const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      };
      const predictor = [0, a, b, (a + b) >> 1, paeth()][filter] ?? 0;
      px[y * stride + i] = (v + predictor) & 0xff;
    }
  }
  return { width, height, channels, pixels: px };
}

/** Pixels exactly of one colour, and their bounding box. */
function findColour(img: Image, [r, g, b]: readonly number[]) {
  let count = 0, minX = Infinity, minY = Infinity, maxX = -1, maxY = -1;
  for (let y = 0; y < img.height; y++) {
    for (let xx = 0; xx < img.width; xx++) {
      const o = (y * img.width + xx) * img.channels;
      if (img.pixels[o] === r && img.pixels[o + 1] === g && img.pixels[o + 2] === b) {
        count++;
        [minX, minY, maxX, maxY] = [Math.min(minX, xx), Math.min(minY, y), Math.max(maxX, xx), Math.max(maxY, y)];
      }
    }
  }
  return { count, box: { x: minX, y: minY, width: maxX - minX + 1, height: maxY - minY + 1 } };
}

async function ocr(source: string, crop: { x: number; y: number; width: number; height: number }, scale: number, name: string, psm: string) {
  const out = path.join(results, `${name}.png`);
  await x('convert', [source, '-crop', `${crop.width}x${crop.height}+${crop.x}+${crop.y}`, '+repage', '-resize', `${scale}%`, out]);
  return (await x('tesseract', [out, 'stdout', '--psm', psm])).trim();
}

function widgetDump(stderr: string): { title: string; mapped: boolean; focus: string | null; labels: { label: string; text: string; useMarkup: boolean }[] } {
  const line = stderr.split('\n').find((l) => l.startsWith('consent-dialog-dump: '));
  if (!line) throw new Error(`the dialog printed no widget dump; its stderr was:\n${stderr}`);
  return JSON.parse(line.slice('consent-dialog-dump: '.length));
}

beforeAll(async () => {
  for (const id of Object.keys({ gjs: 1, xdotool: 1, xwininfo: 1, import: 1, convert: 1, tesseract: 1 }) as (keyof typeof tools)[]) {
    tools[id] = requireProgram(id);
  }
  mkdirSync(results, { recursive: true });
  scratch = mkdtempSync(path.join(os.tmpdir(), 'xdp-vm-consent-'));
  distDir = path.join(scratch, 'dist');
  const built = await runProgram(process.execPath, [path.join(repo, 'dialogs', 'build.mjs'), '--outdir', distDir], {
    inheritEnv: true,
    timeoutMs: 120_000,
  });
  process.stdout.write(built.stdout);

  xvfb = await startXvfb();
  display = xvfb.display;
  onDisplay.env.DISPLAY = display;
}, 180_000);

afterEach(async () => {
  for (const entry of live) entry.abort.abort();
  await Promise.all([...live].map((e) => e.outcome));
});

afterAll(async () => {
  await xvfb?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('GJS consent dialog under Xvfb', () => {
  it('maps under its fixed title, paints the VM colour swatch, shows guest markup literally, and Escape denies', async () => {
    const shown = show({}, ['--dump-widgets'], 'Work');
    const id = await waitForWindow(shown.title);
    expect(await x('xwininfo', ['-id', id])).toMatch(/Map State: IsViewable/);
    await sleep(SETTLE_MS);

    const shot = path.join(results, 'dialog.png');
    await x('import', ['-window', 'root', `png24:${shot}`]);
    console.log(`consent dialog screenshot: ${shot}`);
    const swatch = findColour(decodePng(shot), SWATCH.rgb);
    // The label on its swatch is ~75×32 px; well over a thousand pixels carry the exact colour.
    expect(swatch.count, `pixels of ${SWATCH.hex} in ${shot}`).toBeGreaterThan(1000);
    expect(await ocr(shot, swatch.box, 400, 'swatch-ocr', '7')).toBe('Work');

    const geometry = await x('xwininfo', ['-id', id]);
    const num = (name: string) => Number(new RegExp(`${name}:\\s+(-?\\d+)`).exec(geometry)?.[1]);
    const whole = await ocr(shot, { x: num('Absolute upper-left X'), y: num('Absolute upper-left Y'), width: num('Width'), height: num('Height') }, 200, 'window-ocr', '3');
    expect(whole).toContain('Text from the VM (unverified)');
    expect(whole).toContain('<b>bold</b>');

    await pressKeys(id, 'Escape');
    expect(await shown.outcome).toEqual({ decision: 'deny', reason: 'closed', via: 'gui' });

    const dump = widgetDump(shown.stderr());
    expect(dump).toMatchObject({ title: 'Permission request from Work', mapped: true, focus: 'Deny' });
    const guest = dump.labels.filter((l) => l.label.includes('bold'));
    expect(guest).toEqual([{ label: HOSTILE, text: HOSTILE, useMarkup: false }]);
    // Had the markup been interpreted, GTK would report the text without the tags.
    expect(dump.labels.some((l) => l.text.includes('bold & x'))).toBe(false);
    expect(dump.labels.map((l) => l.text)).toContain('Text from the VM (unverified):');
    expect(dump.labels.map((l) => l.text)).toContain('Always allow');
    expect(dump.labels.some((l) => /^Denies automatically in \d+ s$/.test(l.text))).toBe(true);
  }, 60_000);

  it('Return on the focused "Allow once" button allows once', async () => {
    const shown = show();
    const id = await waitForWindow(shown.title);
    await sleep(SETTLE_MS);
    // Focus starts on Deny; Tab moves it to Allow once.
    await pressKeys(id, 'Tab', 'Return');
    expect(await shown.outcome).toEqual({ decision: 'allow-once', reason: 'user', via: 'gui' });
  }, 30_000);

  it('Return with focus left on the default button denies', async () => {
    const shown = show();
    const id = await waitForWindow(shown.title);
    await sleep(SETTLE_MS);
    await pressKeys(id, 'Return');
    expect(await shown.outcome).toEqual({ decision: 'deny', reason: 'user', via: 'gui' });
  }, 30_000);

  it('keys pressed the moment the window appears cannot allow: the allow buttons are not armed yet', async () => {
    const shown = show();
    const id = await waitForWindow(shown.title);
    await pressKeys(id, 'Tab', 'Return');
    expect(await shown.outcome).toMatchObject({ decision: 'deny' });
  }, 30_000);

  it('a dialog left alone denies with reason "timeout" after its countdown; no "Always allow" unless offered', async () => {
    const started = Date.now();
    const shown = show({ timeoutSeconds: 3, allowAlways: false }, ['--dump-widgets']);
    await waitForWindow(shown.title);
    expect(await shown.outcome).toEqual({ decision: 'deny', reason: 'timeout', via: 'gui' });
    const buttons = widgetDump(shown.stderr()).labels.map((l) => l.text);
    expect(buttons).toContain('Allow once');
    expect(buttons).not.toContain('Always allow');
    expect(Date.now() - started).toBeGreaterThanOrEqual(3000);
    expect(Date.now() - started).toBeLessThan(6000);
  }, 30_000);

  it('an aborted request kills the dialog and denies with reason "cancelled"', async () => {
    const shown = show();
    await waitForWindow(shown.title);
    shown.abort.abort();
    expect(await shown.outcome).toEqual({ decision: 'deny', reason: 'cancelled', via: 'gui' });
    const left = await runProgram(tools.xdotool, ['search', '--name', `^${shown.title}$`], onDisplay).catch(() => ({ stdout: '' }));
    expect(left.stdout.trim()).toBe('');
  }, 30_000);

  it('an invalid request makes the dialog exit 2 with one stderr line and no answer', async () => {
    const script = path.join(distDir, 'dialogs', 'consent', 'main.js');
    const result = await runProgram(tools.gjs, ['-m', script], {
      env: { DISPLAY: display, HOME: scratch },
      input: JSON.stringify({ ...request(), vm: { name: 'work', label: 'Work', color: 'red' } }),
    }).catch((e: { exitCode?: number; stderr?: string }) => e);
    expect(result).toMatchObject({ exitCode: 2 });
    expect((result as { stderr: string }).stderr.trim().split('\n')).toEqual(['xdp-vm-consent: invalid request: vm.color: colour must be #rrggbb']);
  }, 30_000);
});
