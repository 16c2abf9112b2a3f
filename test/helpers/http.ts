import { request } from 'node:http';

/**
 * One HTTP request with headers of our choosing, Host included (fetch does not allow setting Host).
 * Resolves to the status and the body as text.
 */
export function rawRequest(
  url: string,
  options: { method?: string; path: string; host: string; headers?: Record<string, string>; body?: string },
): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: u.hostname, port: u.port, method: options.method ?? 'GET', path: options.path, headers: { host: options.host, ...options.headers } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}
