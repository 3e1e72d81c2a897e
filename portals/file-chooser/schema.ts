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

export const FileChooserOptions = z
  .object({
    accept_label: Label.optional(),
    modal: z.boolean().optional(),
    multiple: z.boolean().optional(),
    directory: z.boolean().optional(),
    filters: z.array(Filter).max(64).optional(),
    current_filter: Filter.optional(),
    choices: z.array(Choice).max(32).optional(),
    /** A name the user may accept as it is, so one path component: "../x" would save outside the folder shown. */
    current_name: GuestFileName.optional(),
    current_folder: GuestPath.optional(),
    current_file: GuestPath.optional(),
    /** Joined to the folder the user picks (GLib's g_file_get_child keeps ".."), so each must be one path component. */
    files: z.array(GuestFileName).max(1024).optional(),
  })
  .strict();
export type FileChooserOptions = z.infer<typeof FileChooserOptions>;

export const DialogKind = z.enum(['open', 'save', 'save-files']);
export type DialogKind = z.infer<typeof DialogKind>;

/** The impl.portal method behind each kind. */
export const METHOD_OF_KIND: Record<DialogKind, 'OpenFile' | 'SaveFile' | 'SaveFiles'> = {
  open: 'OpenFile',
  save: 'SaveFile',
  'save-files': 'SaveFiles',
};

/** Which options each kind accepts, as in the backend XML (plus current_folder for OpenFile, added upstream later). */
export const OPTIONS_OF_KIND: Record<DialogKind, readonly (keyof FileChooserOptions)[]> = {
  open: ['accept_label', 'modal', 'multiple', 'directory', 'filters', 'current_filter', 'choices', 'current_folder'],
  save: ['accept_label', 'modal', 'multiple', 'filters', 'current_filter', 'choices', 'current_name', 'current_folder', 'current_file'],
  'save-files': ['accept_label', 'modal', 'choices', 'current_folder', 'files'],
};

export const Response = z.union([z.literal(0), z.literal(1), z.literal(2)]);
export type Response = z.infer<typeof Response>;

/**
 * A URI of a path up to PATH_MAX with every byte percent-encoded. What the
 * trusted dialog returns is bounded by this and by the frame cap, not by a
 * guess at how long a file name is.
 */
export const MAX_URI_CHARS = 'file://'.length + 3 * MAX_PATH_BYTES;

export const FileChooserResults = z
  .object({
    uris: z.array(z.string().max(MAX_URI_CHARS)).max(1024).optional(),
    choices: z.array(z.tuple([z.string().max(64), z.string().max(64)])).max(32).optional(),
    current_filter: Filter.optional(),
    writable: z.boolean().optional(),
  })
  .strict();
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
