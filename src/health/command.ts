import type { Logger } from '../logger.js';
import { hookEnv } from '../providers/command.js';
import { describeEnd, runHook, toArgv, type CommandLine } from '../providers/hook.js';
import type { HealthCheck, HealthCheckResult, HealthCheckTarget } from './types.js';

/**
 * resalloc's livecheck: a hook with the VM in its environment (VMPOOL_VM_NAME, VMPOOL_VM_IP,
 * VMPOOL_GROUP, VMPOOL_GROUP_NAME), which is as clean as a provider hook's (runHook); exit 0 means
 * healthy. Killed with its process group at the timeout.
 */
export class CommandHealthCheck implements HealthCheck {
  readonly type = 'command';
  private readonly argv: string[];

  constructor(
    cmd: CommandLine,
    private readonly env: Record<string, string>,
    private readonly logger: Logger,
    /** Variables of vmpool's environment the check gets too (`pass_env`), and the secrets masked in its output. */
    private readonly options: { passEnv?: readonly string[]; secrets?: readonly string[] } = {},
  ) {
    this.argv = toArgv(cmd);
  }

  async check(
    target: HealthCheckTarget,
    { timeoutMs, log }: { timeoutMs: number; log?: (line: string) => void | Promise<void> },
  ): Promise<HealthCheckResult> {
    const result = await runHook({
      argv: this.argv,
      env: hookEnv(target.group, this.env, { name: target.vmName, ip: target.vmIp }),
      passEnv: this.options.passEnv ?? [],
      secrets: this.options.secrets ?? [],
      timeoutMs,
      // The check's timeout is short already: no grace before SIGKILL.
      killGraceMs: 0,
      logger: this.logger.child({ vmName: target.vmName }),
      label: 'check cmd',
      log,
    });
    const ok = !result.startError && !result.timedOut && result.code === 0;
    const last = result.tail.filter((l) => l.trim()).at(-1);
    return { ok, detail: `check cmd ${describeEnd(result, timeoutMs)}${last ? `: ${JSON.stringify(last.slice(0, 200))}` : ''}` };
  }
}
