import type { RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';
import { RELEASE_OUTCOMES, type ReleaseOutcome } from '../../pool/autohold.js';

export const registerRelease: RegisterCommand = (program, { io, withPool }) => {
  program
    .command('release')
    .description('release an in_use VM (it stays bound to its owner and sandbox)')
    .argument('<name>')
    .option('--lease-id <id>', 'only if the VM still holds this lease')
    .option('--outcome <outcome>', `how the build ended: ${RELEASE_OUTCOMES.join(' or ')} (failed: an autohold rule may keep the VM)`)
    .action(async (name: string, opts: { leaseId?: string; outcome?: string }) => {
      if (opts.outcome !== undefined && !(RELEASE_OUTCOMES as readonly string[]).includes(opts.outcome)) {
        throw new CliError(`--outcome: ${RELEASE_OUTCOMES.join(' or ')}, not ${JSON.stringify(opts.outcome)}`, ExitCodes.USAGE);
      }
      await withPool(async (vmm) => {
        if (!(await vmm.releaseVm(name, opts.leaseId, { outcome: opts.outcome as ReleaseOutcome | undefined }))) {
          const vm = await vmm.getVmRecord(name);
          throw new CliError(`VM ${name} is ${vm.state}, not in_use; nothing released`, ExitCodes.ERROR);
        }
        const vm = await vmm.getVmRecord(name);
        io.out(vm.heldBy?.startsWith('autohold:') ? `released ${name}; held by ${vm.heldBy} (${vm.holdReason ?? ''})\n` : `released ${name}\n`);
      });
    });
};
