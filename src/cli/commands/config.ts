import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { configJsonSchema, configTemplate, launchFingerprint, loadConfig, redactedConfig, type Config } from '../../config/index.js';
import { assertBindAllowed } from '../../http/auth.js';
import { isScheduled, minReadyTimeline } from '../../reconcile/minReady.js';
import type { CliContext, RegisterCommand } from '../context.js';
import { CliError, ExitCodes } from '../exitCodes.js';

/** A subcommand of `vmpool config`. */
type RegisterConfigCommand = (config: Command, ctx: CliContext) => void;

const registerInit: RegisterConfigCommand = (config, { io }) => {
  config
    .command('init')
    .description('write the embedded default as commented YAML to edit (stdout without FILE)')
    .argument('[file]')
    .option('--force', 'overwrite an existing file')
    .action((file: string | undefined, opts: { force?: boolean }) => {
      const text = configTemplate();
      if (file === undefined) {
        io.out(text);
        return;
      }
      try {
        writeFileSync(file, text, { flag: opts.force ? 'w' : 'wx' });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CliError(`${file} exists; not overwritten (use --force to replace it)`, ExitCodes.ERROR);
        throw new CliError(`cannot write ${file}: ${(err as Error).message}`, ExitCodes.ERROR);
      }
      io.err(`wrote ${file}; edit it, then check it with \`vmpool config check ${file}\`\n`);
    });
};

const registerCheck: RegisterConfigCommand = (config, { io, print }) => {
  config
    .command('check')
    .description('validate a config file (exit 0 when valid, 2 otherwise)')
    .argument('<file>')
    .option('--json', 'print the config with defaults as JSON')
    .action((file: string, opts: { json?: boolean }) => {
      const cfg = loadConfig(file, {});
      // The same rule the web process applies at start, so that `ok` means it will start.
      try {
        assertBindAllowed(cfg.web);
      } catch (err) {
        throw new CliError(`${file}: ${(err as Error).message}`, ExitCodes.USAGE);
      }
      const summary = `${file}: ok (${cfg.groups.length} group${cfg.groups.length === 1 ? '' : 's'}: ${cfg.groups.map((g) => g.name).join(', ')})`;
      // What `vmpool info` will show as each group's launch once this config is current.
      const launches = `launch fingerprints: ${cfg.groups.map((g) => `${g.name} ${launchFingerprint(g)}`).join(', ')}`;
      print(opts.json === true, redactedConfig(cfg), () => [summary, launches, ...scheduleLines(cfg, io.now?.() ?? Date.now())].join('\n'));
    });
};

const registerSchema: RegisterConfigCommand = (config, { io }) => {
  config
    .command('schema')
    .description('print the JSON Schema of the config file (what editors validate and complete with)')
    .action(() => {
      io.out(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
    });
};

/** The subcommands of `vmpool config`, in help order: a new one is one more entry. */
const CONFIG_COMMANDS: readonly RegisterConfigCommand[] = [registerInit, registerCheck, registerSchema];

export const registerConfig: RegisterCommand = (program, ctx) => {
  const configCommand = program.command('config').description('config file tools');
  for (const register of CONFIG_COMMANDS) register(configCommand, ctx);
};

/** For each group whose min_ready follows a schedule: its value over the next 24 hours (UTC). */
function scheduleLines(cfg: Config, now: number): string[] {
  const lines: string[] = [];
  for (const g of cfg.groups) {
    if (!isScheduled(g.min_ready)) continue;
    lines.push(`group ${g.name}: min_ready over the next 24 hours (UTC):`);
    for (const run of minReadyTimeline(g.min_ready, now, 24)) {
      const at = (ms: number) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
      lines.push(`  ${at(run.from)} - ${at(run.to)}  ${run.value}`);
    }
  }
  return lines;
}
