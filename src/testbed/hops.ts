/** Hop marks (src/trace.ts) read back from the JSON log lines of several processes. */
export interface HopMark {
  hop: string;
  at: number;
  pid: number;
}

export function hopMarks(lines: readonly string[]): HopMark[] {
  const marks: HopMark[] = [];
  for (const line of lines) {
    if (!line.includes('"hop"')) continue;
    try {
      const j = JSON.parse(line) as { hop?: string; at?: number; pid?: number };
      if (j.hop && typeof j.at === 'number') marks.push({ hop: j.hop, at: j.at, pid: j.pid ?? 0 });
    } catch {
      /* not ours */
    }
  }
  return marks;
}

/** The last mark of each name at or after `since`. */
export function lastMarks(lines: readonly string[], since: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of hopMarks(lines)) if (m.at >= since) out.set(m.hop, m.at);
  return out;
}

export interface HopRow {
  hop: string;
  ms: number;
}

/**
 * The forwarded FileChooser round trip when the app runs in a VM: guest marks are on the
 * guest's clock and host marks on the host's, so each row subtracts marks of
 * one clock only; the link row is what the guest waited minus what the host spent.
 */
export function vmFileChooserHops(app: { t0: number; t1: number; readMs?: number }, guest: Map<string, number>, host: Map<string, number>): HopRow[] {
  const g = (k: string) => need(guest, k, 'guest');
  const h = (k: string) => need(host, k, 'host');
  const hostSpent = h('host.share-ready') - h('host.received');
  const rows: HopRow[] = [
    { hop: 'app → guest xdg-desktop-portal → guest backend', ms: g('guest.received') - app.t0 },
    { hop: 'guest backend ↔ host daemon, both ways (link)', ms: g('guest.answered') - g('guest.received') - hostSpent },
    { hop: 'host daemon: checks and path translation', ms: h('host.dialog-called') - h('host.received') },
    { hop: "host dialog (the desktop's FileChooser backend for OpenFile, xdg-desktop-portal for saves) → answer", ms: h('host.dialog-answered') - h('host.dialog-called') },
    { hop: 'path checks, planted-link guard, document store grant, audit', ms: h('host.granted') - h('host.dialog-answered') },
    { hop: 'share ready in the guest (plugged in, mounted)', ms: h('host.share-ready') - h('host.granted') },
    { hop: 'guest backend → guest xdg-desktop-portal → app', ms: app.t1 - g('guest.answered') },
  ];
  if (app.readMs !== undefined) rows.push({ hop: 'app reads the file through the share', ms: app.readMs });
  return rows;
}

function need(marks: Map<string, number>, k: string, side: string): number {
  const v = marks.get(k);
  if (v === undefined) throw new Error(`no "${k}" mark from the ${side}: run with XDP_VM_LOG_LEVEL=debug`);
  return v;
}
