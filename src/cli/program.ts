import { Command, CommanderError } from 'commander';
import { createContext, type RegisterCommand } from './context.js';
import { ExitCodes, exitCodeOf } from './exitCodes.js';
import { defaultIo, type CliIo } from './io.js';
import { registerAcquire } from './commands/acquire.js';
import { registerAcquireSet } from './commands/acquireSet.js';
import { registerAdd } from './commands/add.js';
import { registerBreaker } from './commands/breaker.js';
import { registerCancel } from './commands/cancel.js';
import { registerConfig } from './commands/config.js';
import { registerDown } from './commands/down.js';
import { registerDrain } from './commands/drain.js';
import { registerEvents } from './commands/events.js';
import { registerGroup } from './commands/group.js';
import { registerHold } from './commands/hold.js';
import { registerAutohold } from './commands/autohold.js';
import { registerInfo } from './commands/info.js';
import { registerList } from './commands/list.js';
import { registerRelease } from './commands/release.js';
import { registerStart } from './commands/start.js';
import { registerTerminate } from './commands/terminate.js';
import { registerUndrain } from './commands/undrain.js';
import { registerUnhold } from './commands/unhold.js';
import { registerWhy } from './commands/why.js';

export { cliAcquireGraceMs } from './commands/acquire.js';

/** The commands of `vmpool`, in help order. */
const COMMANDS: readonly RegisterCommand[] = [
  registerStart,
  registerInfo,
  registerBreaker,
  registerList,
  registerAcquire,
  registerAcquireSet,
  registerWhy,
  registerCancel,
  registerRelease,
  registerTerminate,
  registerDown,
  registerHold,
  registerUnhold,
  registerAutohold,
  registerAdd,
  registerDrain,
  registerUndrain,
  registerGroup,
  registerEvents,
  registerConfig,
];

/** Builds the `vmpool` program. Actions set process.exitCode; the caller exits. */
export function buildProgram(io: CliIo = defaultIo): Command {
  const program = new Command();
  program
    .name('vmpool')
    .description('Pool manager for disposable build VMs')
    .option('-c, --config <file>', 'config file (YAML); default: VMPOOL_CONFIG or the embedded local pool')
    .showHelpAfterError()
    .addHelpText('after', '\nExit codes: 0 ok, 1 error (refused by the VM state, RedisConnection unreachable), 2 usage or config error,\n3 VM not found, 4 no VM available.\nPool prefix: VMPOOL_PREFIX overrides redis.prefix.')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
  const ctx = createContext(program, io);
  for (const register of COMMANDS) register(program, ctx);
  return program;
}

/** Runs the CLI and returns its exit code (commander's usage errors are 2). */
export async function runCli(argv: string[], io: CliIo = defaultIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return ExitCodes.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version are fine; help shown because no command was given is a usage error.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return ExitCodes.OK;
      return ExitCodes.USAGE;
    }
    io.err(`vmpool: ${(err as Error).message}\n`);
    return exitCodeOf(err);
  }
}
