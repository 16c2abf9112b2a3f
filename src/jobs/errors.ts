import type { ZodError } from 'zod';

/** One line per problem: `path: message`, for job failure reasons and API errors. */
export function formatZodError(error: ZodError): string {
  return error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(payload)'}: ${i.message}`).join('; ');
}
