/**
 * A URL as it may be printed: the password of its user info replaced by `***` (the user name
 * stays, it helps to tell connections apart). Anything that does not parse as a URL is shown as
 * `***` up to its last `@` when it holds one, since the part before it may be a secret.
 */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password === '') return url;
    parsed.password = '***';
    return parsed.toString().replace(/\/$/, url.endsWith('/') ? '/' : '');
  } catch {
    // Up to the last `@`: a password may hold an unescaped `@` (the URL is then bad, and printed).
    return url.includes('@') ? url.replace(/^([^/]*\/\/)?.*@/s, '$1***@') : url;
  }
}

/** What a masked secret is shown as. */
export const MASK = '***';

/**
 * The text with every occurrence of each secret replaced by `***`, as it is and as JSON escapes it
 * (hooks print JSON; messages quote output with JSON.stringify). Longer secrets go first, so a
 * secret that contains another is masked whole.
 */
export function maskSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  const forms = new Set(secrets.flatMap((s) => [s, JSON.stringify(s).slice(1, -1)]));
  for (const secret of [...forms].sort((a, b) => b.length - a.length)) {
    if (secret !== '' && out.includes(secret)) out = out.split(secret).join(MASK);
  }
  return out;
}
