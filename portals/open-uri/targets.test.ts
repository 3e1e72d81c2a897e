import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { vmConfigs } from '../../src/config/schema.js';

/** The config's openUri table: where links from each VM open. */
const vms = {
  work: { transport: { type: 'vsock', cid: 5 } },
  shop: { label: 'Shop', transport: { type: 'vsock', cid: 6 } },
};

function problems(extra: Record<string, unknown>, theVms: Record<string, unknown> = vms): string[] {
  try {
    parseConfig(JSON.stringify({ vms: theVms, ...extra }), 'config.json');
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('config: where links open', () => {
  it('gives each VM its targets; a VM or scheme left out opens on the host', () => {
    const cfg = parseConfig(JSON.stringify({ vms, openUri: { work: { https: 'shop', http: 'shop', mailto: 'host' } } }), 'c.json');
    const [work, shop] = vmConfigs(cfg);
    expect(work!.openUri).toEqual({ https: 'shop', http: 'shop', mailto: 'host' });
    expect(shop!.openUri).toBeUndefined();
    expect(problems({})).toEqual([]);
  });

  it('names the key of each mistake', () => {
    const p = problems({ openUri: { work: { https: 'bank', ftp: 'shop', http: 'work' }, lab: { https: 'host' }, shop: { mailto: 'Not A Name' } } });
    expect(p).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^openUri\.work: .*ftp/),
        expect.stringMatching(/^openUri\.shop\.mailto: /),
      ]),
    );
    // The cross-checks run once the shape is right.
    const q = problems({ openUri: { work: { https: 'bank', http: 'work' }, lab: { https: 'host' } } });
    expect(q).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^openUri\.work\.https: no VM "bank" is configured: a link target is "host" or a configured VM/),
        expect.stringMatching(/^openUri\.work\.http: links from "work" cannot target "work" itself/),
        expect.stringMatching(/^openUri\.lab: no VM "lab" is configured/),
      ]),
    );
    expect(q).toHaveLength(3);
  });

  it('refuses "host" as a target when a VM is also named host', () => {
    const p = problems({ openUri: { work: { https: 'host' } } }, { ...vms, host: { transport: { type: 'vsock', cid: 7 } } });
    expect(p).toEqual([expect.stringMatching(/^openUri\.work\.https: "host" is ambiguous here/)]);
  });
});
