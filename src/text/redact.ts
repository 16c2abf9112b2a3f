/**
 * A URL as it may be printed: the password of its user info replaced by `***` (the user name
 * stays, it helps to tell connections apart). Anything that does not parse as a URL is shown as
 * `***` when it holds an `@`, since the part before it may be a secret.
 */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password === '') return url;
    parsed.password = '***';
    return parsed.toString().replace(/\/$/, url.endsWith('/') ? '/' : '');
  } catch {
    return url.includes('@') ? url.replace(/^([^/]*\/\/)?[^@]*@/, '$1***@') : url;
  }
}
