import { defaultConfigPath, loadConfig } from '../config/load.js';
import { vmConfigs, type VmConfig } from '../config/schema.js';
import { Bus } from '../dbus/bus.js';
import { subjectRank } from '../policy/evaluate.js';
import {
  ANY_VM,
  checkArgument,
  idOf,
  PORTAL_NAMES,
  Subject,
  tableOf,
  VERDICTS,
  type InvalidEntry,
  type PolicyRow,
  type PortalName,
  type Verdict,
} from '../policy/model.js';
import { PermissionTables } from '../policy/store.js';
import { PORTALS } from '../../portals/index.js';
import { UsageError, parse, sessionBusAddress, table, type Verb } from './common.js';

const FORMS = {
  list: 'xdp-vm permissions list [--json]',
  show: 'xdp-vm permissions show VM [--json] [--config FILE]',
  set: 'xdp-vm permissions set VM PORTAL allow|deny|ask [ARG] [--config FILE]',
  reset: 'xdp-vm permissions reset VM|--all [--config FILE]',
} as const;
type Form = keyof typeof FORMS;

const NAME_WIDTH = Math.max(...PORTALS.map((p) => p.name.length));
const ARGS = PORTALS.map((p) => `  ${p.name.padEnd(NAME_WIDTH)}  ${p.policy.describeArgument}`).join('\n');
const CONSENT = PORTALS.map((p) => `${p.name}: ${p.policy.consent}.`).join('\n');
const WHEN_NO_ROW = PORTALS.map((p) => p.policy.whenNoRow).join('; ');

const usage = `Usage: ${FORMS.list}
       ${FORMS.show}
       ${FORMS.set}
       ${FORMS.reset}

Decide what each VM may ask for, as \`flatpak permission-*\` does for apps.
VM is a configured VM's name, @tag:TAG (every VM with that tag) or @anyvm.
PORTAL is ${PORTAL_NAMES.join(', ')}. ARG narrows a row to one argument:
${ARGS}

The most specific row wins: the VM's own row, then one of its tags', then
@anyvm's; among those, a row naming the request's argument beats one without.
${CONSENT}

Rows live in the permission store, tables ${PORTAL_NAMES.map(tableOf).join(', ')}
(see \`flatpak permission-list\`), and apply to the next request, whether or
not the host daemon is running.`;

const FORM_HELP: Record<Form, string> = {
  list: `Usage: ${FORMS.list}\n\nList every row of every VM, tag and @anyvm.`,
  show: `Usage: ${FORMS.show}\n\nFor a VM: every row that applies to it (its own, its tags', @anyvm's).\nFor @tag:TAG or @anyvm: that subject's own rows.`,
  set: `Usage: ${FORMS.set}\n\nAdd or replace one row. PORTAL is ${PORTAL_NAMES.join(', ')}; ARG:\n${ARGS}`,
  reset: `Usage: ${FORMS.reset}\n\nRemove every row of VM (a name, @tag:TAG or @anyvm), or with --all every row.`,
};

interface RowJson {
  portal: PortalName;
  argument: string | null;
  vm: string;
  decision: Verdict;
  table: string;
  id: string;
}

const json = (r: PolicyRow): RowJson => ({ portal: r.portal, argument: r.arg ?? null, vm: r.subject, decision: r.verdict, table: tableOf(r.portal), id: idOf(r) });

function portalNamed(name: string): PortalName {
  const p = PORTAL_NAMES.find((n) => n.toLowerCase() === name.toLowerCase());
  if (!p) throw new UsageError(`unknown portal "${name}"; known portals: ${PORTAL_NAMES.join(', ')}`);
  return p;
}

function verdictNamed(name: string): Verdict {
  const v = VERDICTS.find((n) => n === name);
  if (!v) throw new UsageError(`unknown decision "${name}"; choose ${VERDICTS.join(', ')}`);
  return v;
}

/** A subject the user typed: @anyvm or @tag:TAG as they are, a VM name only if configured. */
function subjectNamed(name: string, configFile: string | undefined): { subject: string; vm?: VmConfig } {
  if (name.startsWith('@')) {
    if (!Subject.safeParse(name).success) throw new UsageError(`"${name}" is neither ${ANY_VM} nor @tag:TAG (TAG: lowercase letters, digits and "-")`);
    return { subject: name };
  }
  const vms = vmConfigs(loadConfig(configFile ?? defaultConfigPath()));
  const vm = vms.find((v) => v.name === name);
  if (!vm) throw new UsageError(`no VM named "${name}"; configured: ${vms.map((v) => v.name).join(', ') || 'none'}; or use @tag:TAG or ${ANY_VM}`);
  return { subject: name, vm };
}

function print(rows: PolicyRow[], invalid: InvalidEntry[], asJson: boolean, extra: Record<string, unknown> = {}, empty = 'No rows.'): void {
  if (asJson) return console.log(JSON.stringify({ ...extra, rows: rows.map(json), invalid }, null, 2));
  for (const e of invalid) console.error(`warning: ignoring ${e.table} ${e.id} ${e.app}: ${e.problem}`);
  if (rows.length === 0) return console.log(empty);
  console.log(table(rows.map((r) => [r.portal, r.arg ?? '*', r.subject, r.verdict]), ['PORTAL', 'ARGUMENT', 'VM', 'DECISION']));
}

const order = (a: PolicyRow, b: PolicyRow) => a.portal.localeCompare(b.portal) || a.subject.localeCompare(b.subject) || (a.arg ?? '').localeCompare(b.arg ?? '');

async function show(store: PermissionTables, name: string, configFile: string | undefined, asJson: boolean): Promise<void> {
  const { subject, vm } = subjectNamed(name, configFile);
  const { rows, invalid } = await store.readAll();
  const mine = rows.filter((r) => (vm ? subjectRank(r.subject, vm) > 0 : r.subject === subject)).sort(order);
  const ours = invalid.filter((e) => e.app === subject);
  print(mine, ours, asJson, vm ? { vm: vm.name, tags: vm.tags } : { vm: subject }, `No rows apply to ${subject}.`);
  if (!asJson && vm) console.log(`\nWhere no row applies: ${WHEN_NO_ROW}.`);
}

async function set(store: PermissionTables, args: string[], configFile: string | undefined): Promise<void> {
  if (args.length < 3 || args.length > 4) throw new UsageError(`permissions set takes VM PORTAL DECISION [ARG]\n\n${FORM_HELP.set}`);
  const { subject } = subjectNamed(args[0]!, configFile);
  const portal = portalNamed(args[1]!);
  const verdict = verdictNamed(args[2]!);
  let arg: string | undefined;
  if (args[3] !== undefined) {
    const checked = checkArgument(portal, args[3]);
    if (!checked.ok) throw new UsageError(checked.problem);
    arg = checked.arg;
  }
  await store.set({ portal, subject, verdict, ...(arg === undefined ? {} : { arg }) });
  console.log(`${subject}: ${portal}${arg ? ` ${arg}` : ''} → ${verdict}`);
}

async function reset(store: PermissionTables, args: string[], all: boolean, configFile: string | undefined): Promise<void> {
  if (all === (args.length === 1) || args.length > 1) throw new UsageError(`permissions reset takes VM or --all\n\n${FORM_HELP.reset}`);
  if (all) return void console.log(`Removed all ${await store.resetAll()} row(s).`);
  const name = args[0]!;
  // A VM taken out of the config may still have rows worth removing.
  const subject = name.startsWith('@') || (await store.readAll()).rows.every((r) => r.subject !== name) ? subjectNamed(name, configFile).subject : name;
  console.log(`Removed ${await store.resetSubject(subject)} row(s) of ${subject}.`);
}

export const permissionsVerb: Verb = {
  name: 'permissions',
  usage,
  async run(argv) {
    const { values, positionals } = parse(argv, { config: { type: 'string' }, json: { type: 'boolean' }, all: { type: 'boolean' } }, usage);
    const [form = 'list', ...args] = positionals;
    if (!(form in FORMS)) throw new UsageError(`unknown form "${form}"; choose ${Object.keys(FORMS).join(', ')}\n\n${usage}`);
    if (values.help) return console.log(positionals.length ? FORM_HELP[form as Form] : usage), 0;
    if (values.all && form !== 'reset') throw new UsageError(`--all goes with reset only\n\n${usage}`);
    if (form === 'list' && args.length) throw new UsageError(`permissions list takes no arguments\n\n${FORM_HELP.list}`);
    if (form === 'show' && args.length !== 1) throw new UsageError(`permissions show takes one VM\n\n${FORM_HELP.show}`);
    const bus = await Bus.connect(sessionBusAddress());
    try {
      const store = new PermissionTables(bus);
      if (form === 'list') {
        const { rows, invalid } = await store.readAll();
        print(rows.sort(order), invalid, !!values.json);
      } else if (form === 'show') await show(store, args[0]!, values.config, !!values.json);
      else if (form === 'set') await set(store, args, values.config);
      else await reset(store, args, !!values.all, values.config);
      return 0;
    } finally {
      bus.close();
    }
  },
};
