import { parseDuration } from '../../time.js';
import { safeUser, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerHold: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('hold')
    .description('keep a VM out of acquisition (for debugging)')
    .argument('<name>')
    .option('--by <who>', 'who holds it', `${safeUser()}@cli`)
    .option('--for <duration>', 'end the hold after this long: 90s, 30m, 2h, 1d')
    .option('--until <time>', 'end the hold at this time (ISO 8601, such as 2026-12-24T18:00:00Z)')
    .option('--reason <text>', 'why it is held (shown with the holder)')
    .action(async (name: string, opts: { by: string; for?: string; until?: string; reason?: string }) => {
      if (opts.for !== undefined && opts.until !== undefined) throw new CliError('give --for or --until, not both', ExitCodes.USAGE);
      const duration = opts.for === undefined ? null : parseDuration(opts.for);
      if (opts.for !== undefined && duration === null) throw new CliError(`--for: not a duration: ${JSON.stringify(opts.for)} (use 90s, 30m, 2h or 1d)`, ExitCodes.USAGE);
      const untilAt = opts.until === undefined ? null : Date.parse(opts.until);
      if (untilAt !== null && Number.isNaN(untilAt)) throw new CliError(`--until: not a time: ${JSON.stringify(opts.until)}`, ExitCodes.USAGE);
      await withPool(async (vmm) => {
        const period = duration !== null ? { forMs: duration } : { until: untilAt };
        if (!(await vmm.holdVm(name, opts.by, { ...period, reason: opts.reason ?? null }))) {
          const vm = await vmm.getVmRecord(name);
          throw new CliError(`VM ${name} is already held by ${vm.heldBy}`, ExitCodes.ERROR);
        }
        io.out(`held ${name}\n`);
      });
    });
};
