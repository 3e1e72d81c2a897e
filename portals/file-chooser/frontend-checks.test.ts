import { describe, expect, it } from 'vitest';
import { frontendOptionProblem } from './frontend-checks.js';
import { FileChooserOptions, type Choice, type Filter } from './schema.js';

/** Options our schema lets through and the host frontend refuses; on the direct route we must refuse them too. */
const md: Filter = ['Markdown', [[0, '*.md']]];
const check = (o: Record<string, unknown>) => frontendOptionProblem('open', FileChooserOptions.parse(o));

describe('the frontend\'s option checks, made on the direct route', () => {
  it('passes what the frontend passes', () => {
    const enc: Choice = ['c0', 'Encoding', [['v0', 'UTF-8'], ['v1', 'Latin-1']], 'v0'];
    const box: Choice = ['c1', 'Read only', [], 'false'];
    expect(check({ accept_label: '_Open (Work)', filters: [md, ['Text', [[1, 'text/plain']]]], current_filter: md, choices: [enc, box] })).toBeUndefined();
    // Without a filter list, current_filter may be anything.
    expect(check({ current_filter: ['Other', [[0, '*.x']]] })).toBeUndefined();
    expect(check({ choices: [['c0', 'Box', [], ''], ['c1', 'List', [['v0', 'A']], '']] })).toBeUndefined();
  });

  it.each([
    ['a filter without a name', { filters: [['', [[0, '*.md']]]] }, 'invalid filter: name is empty'],
    ['a filter without rules', { filters: [['Markdown', []]] }, 'invalid filter: no filters'],
    ['an empty glob', { filters: [['Markdown', [[0, '']]]] }, 'invalid filter: invalid glob pattern'],
    ['an empty content type', { current_filter: ['Text', [[1, '']]] }, 'invalid filter: invalid content type'],
    ['a current_filter not in the list', { filters: [md], current_filter: ['Markdown', [[0, '*.markdown']]] }, 'current_filter, if specified, must be present in filters list if list is nonempty'],
    ['a choice without an id', { choices: [['', 'Label', [], 'true']] }, 'invalid choice: id is empty'],
    ['a choice without a label', { choices: [['c0', '', [], 'true']] }, 'invalid choice: label is empty'],
    ['a checkbox set to something else', { choices: [['c0', 'Box', [], 'yes']] }, 'invalid choice: bad current option: yes'],
    ['a value without an id', { choices: [['c0', 'List', [['', 'A']], '']] }, 'invalid choice: option id is empty'],
    ['a value without a label', { choices: [['c0', 'List', [['v0', '']], '']] }, 'invalid choice: option label is empty'],
    ['an initial value not offered', { choices: [['c0', 'List', [['v0', 'A']], 'v9']] }, 'invalid choice: bad current option: v9'],
  ])('refuses %s', (_what, options, problem) => {
    expect(check(options)).toBe(problem);
  });
});
