import { acquireRequestStatus } from '../../acquire/requests.js';
import { requestText, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerWhy: RegisterCommand = (program, { withPool, print }) => {
  program
    .command('why')
    .description('say where an acquire request stands and why it waits (by job id or task id)')
    .argument('<id>', 'acquire job id or task id')
    .option('--json', 'as JSON (GET /api/v1/requests/:id)')
    .action(async (id: string, opts: { json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const status = await acquireRequestStatus(vmm, cfg, id);
        if (!status) throw new CliError(`no acquire request ${JSON.stringify(id)}`, ExitCodes.NOT_FOUND);
        print(Boolean(opts.json), status, () => requestText(status));
      });
    });
};
