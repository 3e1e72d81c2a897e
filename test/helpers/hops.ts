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

/** The forwarded FileChooser round trip, hop by hop. */
export function fileChooserHops(start: number, end: number, marks: Map<string, number>): HopRow[] {
  const m = (k: string) => {
    const v = marks.get(k);
    if (v === undefined) throw new Error(`no "${k}" mark: run the processes with XDP_VM_LOG_LEVEL=debug`);
    return v;
  };
  return [
    { hop: 'app → guest xdg-desktop-portal → guest backend', ms: m('guest.received') - start },
    { hop: 'guest backend → host daemon (link)', ms: m('host.received') - m('guest.received') },
    { hop: 'host daemon: checks and path translation', ms: m('host.dialog-called') - m('host.received') },
    { hop: 'host xdg-desktop-portal → dialog → answer', ms: m('host.dialog-answered') - m('host.dialog-called') },
    { hop: 'document store grant', ms: m('host.granted') - m('host.dialog-answered') },
    { hop: 'host daemon → guest backend (link)', ms: m('guest.answered') - m('host.granted') },
    { hop: 'guest backend → guest xdg-desktop-portal → app', ms: end - m('guest.answered') },
  ];
}
