import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { stateHome } from '../../paths.js';
import { describeIssues } from '../../zod-issues.js';
import { FolderShare, MAX_FOLDER_SHARES } from './spec.js';

/**
 * Where folder shares persist: one JSON file of the user's state
 * ($XDG_STATE_HOME/xdp-vm/folder-shares.json), written whole and renamed
 * into place so a crash leaves the old file or the new one. A file that does
 * not parse is never overwritten: the daemon serves no folder shares, says
 * why, and refuses changes until the user fixes or moves it.
 */
const FILE_VERSION = 1;

const FolderShareFile = z
  .strictObject({
    version: z.literal(FILE_VERSION),
    shares: z.array(FolderShare).max(MAX_FOLDER_SHARES * 64),
  })
  .superRefine((f, ctx) => {
    const seen = new Set<string>();
    for (const [i, s] of f.shares.entries()) {
      const key = `${s.vm}/${s.name}`;
      if (seen.has(key)) ctx.addIssue({ code: 'custom', path: ['shares', i], message: `VM "${s.vm}" has two shares named "${s.name}"` });
      seen.add(key);
    }
  });

export function defaultFolderStorePath(): string {
  return path.join(stateHome(), 'xdp-vm', 'folder-shares.json');
}

export class FolderStore {
  private shares: FolderShare[] = [];
  /** Why the file could not be read; set, nothing is served and nothing is written. */
  problem: string | undefined;

  constructor(readonly file: string = defaultFolderStorePath()) {}

  /** Read the file; a missing one is no shares. Never throws: a broken file is `problem`. */
  load(): this {
    this.problem = undefined;
    this.shares = [];
    if (!existsSync(this.file)) return this;
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(this.file, 'utf8'));
    } catch (err) {
      this.problem = `${this.file} is not valid JSON (${(err as Error).message}); no folder shares are served until it is fixed or moved away`;
      return this;
    }
    const parsed = FolderShareFile.safeParse(json);
    if (!parsed.success) {
      this.problem = `${this.file} is not a folder-shares file: ${describeIssues(parsed.error)}; no folder shares are served until it is fixed or moved away`;
      return this;
    }
    this.shares = parsed.data.shares;
    return this;
  }

  all(): readonly FolderShare[] {
    return this.shares;
  }

  of(vm: string): FolderShare[] {
    return this.shares.filter((s) => s.vm === vm);
  }

  add(share: FolderShare): void {
    this.writable();
    this.save([...this.shares, share]);
  }

  /** Remove a share; false when the VM has none of that name. */
  remove(vm: string, name: string): boolean {
    this.writable();
    const rest = this.shares.filter((s) => !(s.vm === vm && s.name === name));
    if (rest.length === this.shares.length) return false;
    this.save(rest);
    return true;
  }

  private writable(): void {
    if (this.problem) throw new Error(`folder shares cannot change: ${this.problem}`);
  }

  private save(shares: FolderShare[]): void {
    const body = FolderShareFile.parse({ version: FILE_VERSION, shares });
    mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
    renameSync(tmp, this.file);
    this.shares = body.shares;
  }
}
