import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { captureLogger } from '../../test/helpers/log-capture.js';
import { audit, auditFilePath, configureAudit, parseAuditLines, underSystemd } from './audit.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  configureAudit({ file: null });
});

function fresh() {
  const dir = mkdtempSync(path.join(tmpdir(), 'xdp-vm-audit-'));
  dirs.push(dir);
  return path.join(dir, 'state', 'xdp-vm', 'audit.jsonl');
}

describe('audit lines', () => {
  it('have one fixed shape, on stderr and in the file alike', () => {
    const file = fresh();
    const cap = captureLogger();
    configureAudit({ logger: cap.log, file });
    audit({ vm: 'work', portal: 'FileChooser', request: 'r1', decision: 'allow', reason: 'user', grant: ['1a2b3c'], asked: { kind: 'open', paths: ['/home/a/q3.pdf'] } });
    audit({ vm: 'work', portal: 'FileChooser', request: 'r2', decision: 'deny', reason: 'policy', grant: null, rule: 'FileChooser * work deny' });
    const fromFile = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const lines of [cap.lines(), fromFile]) {
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatchObject({ audit: true, vm: 'work', portal: 'FileChooser', request: 'r1', decision: 'allow', reason: 'user', grant: ['1a2b3c'] });
      expect(lines[1]).toMatchObject({ audit: true, request: 'r2', decision: 'deny', reason: 'policy', grant: null, rule: 'FileChooser * work deny' });
    }
    expect(typeof fromFile[0]!.time).toBe('string');
    expect(parseAuditLines(readFileSync(file, 'utf8').split('\n')).map((l) => l.request)).toEqual(['r1', 'r2']);
  });

  it('keep the file and its folder private to the user', () => {
    const file = fresh();
    configureAudit({ logger: captureLogger().log, file });
    audit({ vm: 'work', portal: 'FileChooser', request: 'grants revoke', decision: 'revoke', reason: 'cli', grant: ['x'] });
    expect(statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('are read back skipping whatever is not an audit line', () => {
    const lines = parseAuditLines([
      '{"level":30,"msg":"host daemon ready"}',
      'not json',
      '{"audit":true,"time":"2025-01-01T00:00:00.000Z","vm":"w","portal":"FileChooser","request":"r","decision":"maybe","reason":"user","grant":null}',
      '{"audit":true,"time":"2025-01-01T00:00:00.000Z","vm":"w","portal":"FileChooser","request":"r","decision":"deny","reason":"flood","grant":null,"flood":{"phase":"end","refused":9}}',
    ]);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.flood).toEqual({ phase: 'end', refused: 9 });
  });

  it('go to the journal only when systemd runs us, and to the state folder otherwise', () => {
    expect(underSystemd({ JOURNAL_STREAM: '8:1234' })).toBe(true);
    expect(underSystemd({ INVOCATION_ID: 'abc' })).toBe(true);
    expect(underSystemd({})).toBe(false);
    expect(auditFilePath({ XDG_STATE_HOME: '/s' })).toBe('/s/xdp-vm/audit.jsonl');
  });
});
