import type { Choice, DialogKind, Filter, FileChooserOptions } from './schema.js';

/**
 * The option checks the host's xdg-desktop-portal makes before it hands a
 * request to its backend (file-chooser.c: check_filter, validate_current_filter,
 * check_choice; the same from 1.16.0 to 1.22.x). Our schema caps sizes and
 * types but allows what these refuse, such as an empty filter name, so when we
 * call the backend directly these must be ours: a backend never sees a
 * request the frontend would have refused.
 */
function filterProblem([name, rules]: Filter): string | undefined {
  if (name === '') return 'name is empty';
  if (rules.length === 0) return 'no filters';
  for (const [type, pattern] of rules) {
    if (pattern === '') return type === 0 ? 'invalid glob pattern' : 'invalid content type';
  }
  return undefined;
}

const sameFilter = (a: Filter, b: Filter) => JSON.stringify(a) === JSON.stringify(b);

function choiceProblem([id, label, values, initial]: Choice): string | undefined {
  if (id === '') return 'id is empty';
  if (label === '') return 'label is empty';
  // A choice without values is a checkbox.
  if (values.length === 0) return ['', 'true', 'false'].includes(initial) ? undefined : `bad current option: ${initial}`;
  for (const [valueId, valueLabel] of values) {
    if (valueId === '') return 'option id is empty';
    if (valueLabel === '') return 'option label is empty';
  }
  if (initial !== '' && !values.some(([valueId]) => valueId === initial)) return `bad current option: ${initial}`;
  return undefined;
}

/** Why the frontend would refuse these options (InvalidArgument), or undefined. `kind` is kept for symmetry: the checks are the same for every kind. */
export function frontendOptionProblem(_kind: DialogKind, options: FileChooserOptions): string | undefined {
  for (const filter of options.filters ?? []) {
    const p = filterProblem(filter);
    if (p) return `invalid filter: ${p}`;
  }
  if (options.current_filter) {
    const p = filterProblem(options.current_filter);
    if (p) return `invalid filter: ${p}`;
    const filters = options.filters ?? [];
    if (filters.length > 0 && !filters.some((f) => sameFilter(f, options.current_filter!))) {
      return 'current_filter, if specified, must be present in filters list if list is nonempty';
    }
  }
  for (const choice of options.choices ?? []) {
    const p = choiceProblem(choice);
    if (p) return `invalid choice: ${p}`;
  }
  return undefined;
}
