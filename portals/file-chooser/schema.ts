import { z } from 'zod';
import { GuestFileName, MAX_PATH_BYTES } from '../../src/guest-input.js';
import { defineMethod } from '../../src/protocol/methods.js';

/**
 * FileChooser messages shared by the guest half and the host half. The option
 * keys are those of org.freedesktop.impl.portal.FileChooser; everything the
 * guest sends is capped, because the guest is hostile by assumption.
 */
const Label = z.string().max(256);
const GuestPath = z.string().min(1).max(4096);

export const Filter = z.tuple([Label, z.array(z.tuple([z.union([z.literal(0), z.literal(1)]), Label])).max(64)]);
export type Filter = z.infer<typeof Filter>;

export const Choice = z.tuple([z.string().max(64), Label, z.array(z.tuple([z.string().max(64), Label])).max(64), z.string().max(64)]);
export type Choice = z.infer<typeof Choice>;

export const DialogKind = z.enum(['open', 'save', 'save-files']);
export type DialogKind = z.infer<typeof DialogKind>;

/** The impl.portal method behind each kind. */
export const METHOD_OF_KIND: Record<DialogKind, 'OpenFile' | 'SaveFile' | 'SaveFiles'> = {
  open: 'OpenFile',
  save: 'SaveFile',
  'save-files': 'SaveFiles',
};

/**
 * One row per option, as xdg-desktop-portal keeps them: its name, its D-Bus
 * signature, what a guest may send for it, and which methods accept it (as
 * in the backend XML, plus current_folder for OpenFile, added upstream
 * later). The zod object, the allow-lists and the D-Bus conversions all
 * derive from these rows.
 */
export interface OptionRow<N extends string = string, S extends z.ZodType = z.ZodType> {
  name: N;
  signature: string;
  schema: S;
  kinds: readonly DialogKind[];
}

const row = <N extends string, S extends z.ZodType>(name: N, signature: string, schema: S, kinds: readonly DialogKind[]): OptionRow<N, S> => ({ name, signature, schema, kinds });
const ALL: readonly DialogKind[] = ['open', 'save', 'save-files'];
const OPEN_SAVE: readonly DialogKind[] = ['open', 'save'];

export const OPTION_ROWS = [
  row('accept_label', 's', Label, ALL),
  row('modal', 'b', z.boolean(), ALL),
  row('multiple', 'b', z.boolean(), OPEN_SAVE),
  row('directory', 'b', z.boolean(), ['open']),
  row('filters', 'a(sa(us))', z.array(Filter).max(64), OPEN_SAVE),
  row('current_filter', '(sa(us))', Filter, OPEN_SAVE),
  row('choices', 'a(ssa(ss)s)', z.array(Choice).max(32), ALL),
  /** A name the user may accept as it is, so one path component: "../x" would save outside the folder shown. */
  row('current_name', 's', GuestFileName, ['save']),
  row('current_folder', 'ay', GuestPath, ALL),
  row('current_file', 'ay', GuestPath, ['save']),
  /** Joined to the folder the user picks (GLib's g_file_get_child keeps ".."), so each must be one path component. */
  row('files', 'aay', z.array(GuestFileName).max(1024), ['save-files']),
] as const;

type Shape<T extends readonly OptionRow[]> = { [R in T[number] as R['name']]: z.ZodOptional<R['schema']> };

function shapeOf<T extends readonly OptionRow[]>(rows: T): Shape<T> {
  return Object.fromEntries(rows.map((r) => [r.name, r.schema.optional()])) as Shape<T>;
}

export const FileChooserOptions = z.object(shapeOf(OPTION_ROWS)).strict();
export type FileChooserOptions = z.infer<typeof FileChooserOptions>;
export type OptionName = keyof FileChooserOptions;

export const Response = z.union([z.literal(0), z.literal(1), z.literal(2)]);
export type Response = z.infer<typeof Response>;

/**
 * A URI of a path up to PATH_MAX with every byte percent-encoded. What the
 * trusted dialog returns is bounded by this and by the frame cap, not by a
 * guess at how long a file name is.
 */
export const MAX_URI_CHARS = 'file://'.length + 3 * MAX_PATH_BYTES;

/** The result keys a backend answers with, one row each like the options. */
export const RESULT_ROWS = [
  row('uris', 'as', z.array(z.string().max(MAX_URI_CHARS)).max(1024), ALL),
  row('choices', 'a(ss)', z.array(z.tuple([z.string().max(64), z.string().max(64)])).max(32), ALL),
  row('current_filter', '(sa(us))', Filter, OPEN_SAVE),
  row('writable', 'b', z.boolean(), ['open']),
] as const;

export const FileChooserResults = z.object(shapeOf(RESULT_ROWS)).strict();
export type FileChooserResults = z.infer<typeof FileChooserResults>;

export const OpenDialog = defineMethod({
  name: 'fileChooser.open',
  direction: 'guest-to-host',
  params: z
    .object({
      kind: DialogKind,
      title: z.string().max(1024),
      /** The guest frontend's app id: a hint for the log, never identity. */
      appId: z.string().max(256),
      options: FileChooserOptions,
    })
    .strict(),
  result: z.object({ response: Response, results: FileChooserResults }).strict(),
});

export const FILE_CHOOSER_METHODS = [OpenDialog] as const;
