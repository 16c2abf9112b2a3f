import type { ZodError } from 'zod';

/** One line per problem: `path: message`, for job failure reasons and the errors of the API and the client. */
export function formatZodError(error: ZodError): string {
  return error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(payload)'}: ${i.message}`).join('; ');
}
