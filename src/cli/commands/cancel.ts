import { cancelAcquireRequest } from '../../acquire/requests.js';
import { ambiguousTaskError, requestText, safeUser, type RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

export const registerCancel: RegisterCommand = (program, { withPool, print }) => {
  program
    .command('cancel')
    .description('withdraw a waiting or queued acquire request (by job id or task id); its job fails as cancelled')
    .argument('<id>', 'acquire job id or task id')
    .option('--owner <owner>', 'the owner of the task id (task ids are per owner); without it, the one owner with a request of that task')
    .option('--json', 'the request afterwards, as JSON')
    .action(async (id: string, opts: { owner?: string; json?: boolean }) => {
      await withPool(async (vmm, cfg) => {
        const outcome = await cancelAcquireRequest(vmm, cfg, id, `cancelled by ${safeUser()} with vmpool cancel`, { owner: opts.owner }).catch(ambiguousTaskError);
        if (!outcome) throw new CliError(`no acquire request ${JSON.stringify(id)}`, ExitCodes.NOT_FOUND);
        if (!outcome.cancelled) throw new CliError(`acquire request ${outcome.status.id} is ${outcome.status.state} already; nothing withdrawn`, ExitCodes.ERROR);
        print(Boolean(opts.json), outcome.status, () => `withdrew ${requestText(outcome.status)}`);
      });
    });
};
