import { describe, expect, it } from 'vitest';
import { ConsentRequest } from '../../src/consent/contract.js';
import { hostForSummary, linkQuestion } from './question.js';
import { OpenUriLaunch, OpenUriOpen } from './schema.js';
import { checkUri, isLocalHost, MAX_URI_BYTES } from './uri.js';

const problem = (raw: string) => {
  const r = checkUri(raw);
  return r.ok ? undefined : r.problem;
};
const ok = (raw: string) => {
  const r = checkUri(raw);
  if (!r.ok) throw new Error(`refused ${raw}: ${r.problem}`);
  return r.uri;
};

describe('OpenURI: which links may cross', () => {
  it('takes http, https and mailto, and passes on the parser\'s canonical URL', () => {
    expect(ok('https://EXAMPLE.com:443/a/../b?q=1#f')).toEqual({ href: 'https://example.com/b?q=1#f', scheme: 'https', host: 'example.com' });
    expect(ok('http://example.org:8080/x')).toMatchObject({ scheme: 'http', host: 'example.org:8080' });
    expect(ok('mailto:alice@example.com?subject=Hi%20there')).toMatchObject({ scheme: 'mailto', host: '', href: 'mailto:alice@example.com?subject=Hi%20there' });
    // A backslash the parser reads as a slash: what is shown and opened is the parser's reading.
    expect(ok('https:/\\evil.example/').href).toBe('https://evil.example/');
  });

  it('never lets a file, or any other scheme, cross', () => {
    for (const raw of ['file:///etc/passwd', 'FILE:///home/alice/.ssh/id_ed25519', 'javascript:alert(1)', 'JavaScript:alert(document.cookie)', 'data:text/html,<script>alert(1)</script>', 'vbscript:msgbox', 'ftp://example.com/x', 'smb://server/share', 'x-scheme-handler:foo', 'about:blank', 'blob:https://example.com/uuid']) {
      expect(problem(raw), raw).toMatch(/never opened; only http, https, mailto links cross/);
    }
    expect(problem('/etc/passwd')).toBe('not a link the URL parser accepts');
    expect(problem('example.com')).toBe('not a link the URL parser accepts');
  });

  it('refuses control characters, invisible formatting and spaces, wherever they are', () => {
    for (const raw of ['https://example.com/\x1b[2J', 'https://exa\u0000mple.com/', 'https://example.com/\n', '\thttps://example.com/', 'https://example.com/\u202egnp.exe', 'https://exa\u200bmple.com/', 'https://example.com/a b', 'https://example.com/\u00a0', 'https://example.com/\u2028', 'https://example.com/\x85']) {
      expect(problem(raw), JSON.stringify(raw)).toBe('a link must not contain control characters, invisible formatting or spaces');
    }
  });

  it('caps a link at 4096 bytes, counted in UTF-8 and once written out', () => {
    expect(problem(`https://example.com/${'a'.repeat(MAX_URI_BYTES)}`)).toMatch(/at most 4096 bytes/);
    expect(problem(`https://example.com/${'é'.repeat(2040)}`)).toMatch(/at most 4096 bytes/); // 4080 characters, 8100 bytes
    // Short as typed, long once percent-encoded: é becomes %C3%A9.
    expect(problem(`https://example.com/${'é'.repeat(1000)}`)).toMatch(/once written out in full/);
    expect(problem(`https://${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(60)}.${'e'.repeat(20)}.com/`)).toMatch(/host name is at most 253/);
    expect(checkUri(`https://example.com/${'a'.repeat(4000)}`).ok).toBe(true);
  });

  it('refuses userinfo, the classic disguise of a link\'s host', () => {
    expect(problem('https://www.bank.example@evil.example/login')).toMatch(/user name or password before its host/);
    expect(problem('http://user:pw@evil.com@good.com/')).toMatch(/user name or password/);
    expect(problem('https://:secret@example.com/')).toMatch(/user name or password/);
  });

  it('shows an internationalised host as punycode, so a homograph is visible', () => {
    // "аpple.com" with a Cyrillic а (U+0430), and "раураl.com" all Cyrillic.
    expect(ok('https://\u0430pple.com/').host).toBe('xn--pple-43d.com');
    expect(ok('https://\u0440\u0430\u0443\u0440\u0430l.com/signin').href).toMatch(/^https:\/\/xn--[a-z0-9-]+\.com\/signin$/);
    expect(ok('https://b\u00fccher.example/').host).toBe('xn--bcher-kva.example');
  });

  it('needs an address for mailto and a host for the web', () => {
    expect(problem('mailto:')).toBe('an email link must name an address');
    expect(problem('https://')).toBe('not a link the URL parser accepts');
  });

  it('checks both wire messages with the same rule, and sends the canonical URL on', () => {
    expect(OpenUriOpen.params.parse({ uri: 'https://\u0430pple.com/x' })).toEqual({ uri: 'https://xn--pple-43d.com/x' });
    expect(OpenUriOpen.params.safeParse({ uri: 'file:///etc/shadow' }).error?.issues[0]?.message).toMatch(/"file:" links are never opened/);
    expect(OpenUriLaunch.params.safeParse({ uri: 'javascript:alert(1)' }).success).toBe(false);
    expect(OpenUriOpen.params.safeParse({ uri: 'https://example.com/', path: '/etc/passwd' }).success).toBe(false);
    expect(OpenUriOpen.result.safeParse({ opened: 'vm', where: 'Not A VM Name' }).success).toBe(false);
  });

  it('knows loopback hosts', () => {
    for (const h of ['localhost', 'LOCALHOST:631', 'admin.localhost', '127.0.0.1:8080', '[::1]:3000', '0.0.0.0']) expect(isLocalHost(h), h).toBe(true);
    for (const h of ['example.com', 'localhost.example.com', '128.0.0.1', '[2001:db8::1]']) expect(isLocalHost(h), h).toBe(false);
  });
});

describe('OpenURI: the question the user sees', () => {
  const vm = { name: 'work', label: 'Work', color: '#3465a4' };

  it('emphasises the scheme and host in host words; the whole link only as capped guest text', () => {
    const q = linkQuestion('Work', ok(`https://\u0430pple.com/login?next=${'x'.repeat(400)}`), 'Shop');
    expect(q.summary).toBe('Work wants to open a link to xn--pple-43d.com in Shop');
    expect(q.details).toEqual([
      { label: 'Site', value: 'xn--pple-43d.com' },
      { label: 'Kind', value: 'web page (https)' },
      { label: 'Opens in', value: 'Shop' },
    ]);
    expect(q.guestText).toHaveLength(1);
    expect([...q.guestText[0]!.text].length).toBe(200);
    expect(q.guestText[0]!.text.endsWith('…')).toBe(true);
    // The dialog's own contract accepts it.
    expect(ConsentRequest.safeParse({ version: 1, vm, timeoutSeconds: 60, ...q }).success).toBe(true);
  });

  it('says when a link points at this computer, and when it is not encrypted', () => {
    const q = linkQuestion('Work', ok('http://localhost:631/admin'), 'the host');
    expect(q.summary).toBe('Work wants to open a link to localhost:631 on the host');
    expect(q.details).toContainEqual({ label: 'Kind', value: 'web page (http, not encrypted)' });
    expect(q.details).toContainEqual({ label: 'Note', value: 'this address is on this computer, not on the internet' });
  });

  it('asks about an email without a site', () => {
    const q = linkQuestion('Work', ok('mailto:bob@example.com'), 'the host');
    expect(q.summary).toBe('Work wants to start an email on the host');
    expect(q.details.map((d) => d.label)).toEqual(['Kind', 'Opens in']);
  });

  it('keeps the end of a very long host in the summary, where its owner is', () => {
    const host = `${'login.bank.example.'.repeat(12)}evil.example`;
    const q = linkQuestion('Work', ok(`https://${host}/`), 'the host');
    expect(q.summary).toContain('evil.example on the host');
    expect(q.summary.length).toBeLessThanOrEqual(300);
    expect(hostForSummary(host).startsWith('…')).toBe(true);
    expect(q.details[0]).toEqual({ label: 'Site', value: host });
    expect(ConsentRequest.safeParse({ version: 1, vm, timeoutSeconds: 60, ...q }).success).toBe(true);
  });
});
