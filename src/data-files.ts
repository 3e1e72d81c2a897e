import { readFileSync } from 'node:fs';
import path from 'node:path';
import { packageRoot } from './paths.js';

/** Files shipped in data/; `.in` templates get @VARIABLES@ filled in. */
export function dataPath(name: string): string {
  return path.join(packageRoot(), 'data', name);
}

export function renderDataFile(template: string, vars: Record<string, string>): string {
  const text = readFileSync(dataPath(template), 'utf8');
  return text.replace(/@([A-Z_]+)@/g, (m, key: string) => {
    const v = vars[key];
    if (v === undefined) throw new Error(`${template} needs @${key}@`);
    return v;
  });
}
