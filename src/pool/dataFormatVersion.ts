/**
 * The data-format version this code knows, and the error for a pool past it. Apart from
 * dataFormat.ts (which re-exports both) so that the script wrappers (poolScripts.ts) use them
 * without importing the migrations.
 */

/**
 * The data format this code reads and writes. Version 1: the layout before versions were recorded
 * (groups named by their index in the config's list). Version 2: groups named by name.
 */
export const DATA_FORMAT_VERSION = 2;

/**
 * The pool's data format is past what this vmpool knows. A process refuses to run; a write of the
 * pool's data through a script (a builder's release, renew, task claim or withdrawal: `refused`
 * names it) changed nothing. The message says what is needed.
 */
export class DataFormatTooNew extends Error {
  override name = 'DataFormatTooNew';
  constructor(
    readonly needed: number,
    readonly known: number,
    /** The write that was refused (absent: a process that takes no job). */
    readonly refused?: string,
  ) {
    super(
      refused === undefined
        ? `the pool's data format is version ${needed}, and this vmpool knows versions up to ${known}: ` +
            `run a vmpool release that knows data format ${needed} (the processes of a newer release migrated the pool); this process takes no job`
        : `the pool's data format is version ${needed}, and this vmpool knows versions up to ${known}: ${refused} was refused and changed nothing; ` +
            `upgrade this program's vmpool package to a release that knows data format ${needed} (the processes of a newer release migrated the pool, or are migrating it)`,
    );
  }
}

/** The version a process must refuse to run on: the pool's version, or a migration's in progress, past `known`. */
export function newerThan(state: { version: number; migrating: number }, known: number): number | null {
  const needed = Math.max(state.version, state.migrating);
  return needed > known ? needed : null;
}
