/**
 * Why a spawn failed, as the provider's hook says it (docs/providers.md, "Typed errors"): the JSON
 * `error` field of its last line, or its exit code. The circuit breaker of the group
 * (src/pool/commands/recordSpawnOutcome-1.lua) opens on repeated failures of one class.
 */
export const SPAWN_ERROR_CLASSES = ['quota', 'capacity', 'rate_limit', 'auth', 'transient', 'invalid_request'] as const;
export type SpawnErrorClass = (typeof SPAWN_ERROR_CLASSES)[number];

/** A failure the hook did not classify (or that happened around it: a timeout, bad output). */
export const UNCLASSIFIED = 'unclassified';
export type SpawnFailureClass = SpawnErrorClass | typeof UNCLASSIFIED;

/** Classes that no retry or backoff cures: the breaker stays open until an operator resets it. */
export const OPERATOR_CLASSES: readonly SpawnErrorClass[] = ['auth', 'invalid_request'];

/**
 * Exit codes a hook may use instead of JSON. 64, 65, 75 and 77 are sysexits.h's EX_USAGE,
 * EX_DATAERR, EX_TEMPFAIL and EX_NOPERM; 80-82 are vmpool's own.
 */
export const SPAWN_EXIT_CODES: Readonly<Record<number, SpawnErrorClass>> = {
  64: 'invalid_request',
  65: 'invalid_request',
  75: 'transient',
  77: 'auth',
  80: 'quota',
  81: 'capacity',
  82: 'rate_limit',
};

export function isSpawnErrorClass(value: unknown): value is SpawnErrorClass {
  return typeof value === 'string' && (SPAWN_ERROR_CLASSES as readonly string[]).includes(value);
}

/**
 * The class of a failed spawn hook: the `error` of a JSON object on its last non-empty stdout line
 * (`{"error": "quota", "message": "..."}`), else its exit code, else unclassified. Also returns
 * the hook's message, cut to 300 characters.
 */
export function classifySpawnFailure(stdout: string, exitCode: number | null): { errorClass: SpawnFailureClass; message: string | null } {
  const last = stdout.split('\n').map((l) => l.trim()).filter(Boolean).at(-1);
  if (last?.startsWith('{')) {
    try {
      const parsed = JSON.parse(last) as unknown;
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
        const { error, message } = parsed as { error?: unknown; message?: unknown };
        if (isSpawnErrorClass(error)) return { errorClass: error, message: typeof message === 'string' ? message.slice(0, 300) : null };
      }
    } catch {
      // Not JSON: the exit code decides.
    }
  }
  const byCode = exitCode === null ? undefined : SPAWN_EXIT_CODES[exitCode];
  return { errorClass: byCode ?? UNCLASSIFIED, message: null };
}
