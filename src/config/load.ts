import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { z } from 'zod';
import { configHome } from '../paths.js';
import { Config } from './schema.js';
import { stripJsonComments } from './jsonc.js';

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(problems.map((p) => `${file}: ${p}`).join('\n'));
    this.name = 'ConfigError';
  }
}

export function defaultConfigPath(): string {
  return process.env.XDP_VM_CONFIG ?? path.join(configHome(), 'xdp-vm', 'config.json');
}

/** One problem per line, each naming the key, e.g. `vms.work.transport.port: expected number`. */
export function describeConfigIssues(error: z.ZodError): string[] {
  return error.issues.map((issue) => {
    const key = issue.path.length ? issue.path.join('.') : '(top level)';
    if (issue.code === 'unrecognized_keys') return `${key}: unknown key(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
    if (issue.code === 'invalid_key') return `${key}: bad name: ${issue.issues.map((i) => i.message).join('; ')}`;
    return `${key}: ${issue.message}`;
  });
}

export function parseConfig(text: string, file: string): Config {
  let raw: unknown;
  try {
    raw = JSON.parse(stripJsonComments(text)); // comments allowed: the skeleton install-host writes has them
  } catch (err) {
    throw new ConfigError(file, [`not valid JSON: ${(err as Error).message}`]);
  }
  const parsed = Config.safeParse(raw);
  if (!parsed.success) throw new ConfigError(file, describeConfigIssues(parsed.error));
  return parsed.data;
}

export function loadConfig(file = defaultConfigPath()): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(file, [code === 'ENOENT' ? 'no such file; see README.md "Configure a VM"' : `cannot read: ${(err as Error).message}`]);
  }
  return parseConfig(text, file);
}
