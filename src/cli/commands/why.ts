import { acquireRequestStatus } from '../../acquire/requests.js';
import { ambiguousTaskError, requestText, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerWhy: RegisterCommand = (program, { withPool, print }) => {
  program
    .command('why')
    .description('say where an acquire request stands and why it waits (by job id or task id)')
    .argument('<id>', 'acquire job id or task id')
    .option('--owner <owner>', 'the owner of the task id (task ids are per owner); without it, the one owner with a request of that task')
    .option('--json', 'as JSON (GET /api/v1/requests/:id)')
    .action(async (id: string, opts: { owner?: string; json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const status = await acquireRequestStatus(vmm, cfg, id, { owner: opts.owner }).catch(ambiguousTaskError);
        if (!status) throw new CliError(`no acquire request ${JSON.stringify(id)}`, ExitCodes.NOT_FOUND);
        print(Boolean(opts.json), status, () => requestText(status));
      }, { reads: true });
    });
};
