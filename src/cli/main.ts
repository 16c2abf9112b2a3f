#!/usr/bin/env node
import { Command } from 'commander';
import { createLogger } from '../logger.js';
import { VmManager } from '../pool/vmManager.js';
import { startProcessTypes, stopOnSignals, type RunningProcess } from '../jobs/boot.js';
import { requireRedis, resolveConfig } from '../jobs/main.js';
import { WORKER_PROCESS_TYPES, isWorkerProcessType, type WorkerProcessType } from '../jobs/processTypes.js';

const program = new Command();
program.name('vmpool').description('Pool manager for disposable build VMs').option('-c, --config <file>', 'config file (YAML); default: VMPOOL_CONFIG or the embedded local pool');

program
  .command('start')
  .description(`run process types in this process (default: all of ${WORKER_PROCESS_TYPES.join(', ')})`)
  .argument('[types...]', 'process types')
  .action(async (types: string[]) => {
    const chosen = types.length ? types : [...WORKER_PROCESS_TYPES];
    const unknown = chosen.filter((t) => !isWorkerProcessType(t));
    if (unknown.length) {
      process.stderr.write(`unknown process type(s): ${unknown.join(', ')}; known: ${WORKER_PROCESS_TYPES.join(', ')}\n`);
      process.exit(2);
    }
    const logger = createLogger('vmpool');
    const { config, source } = resolveConfig(program.opts().config);
    logger.info({ config: source, types: chosen, redis: config.redis.url }, 'starting vmpool');
    await requireRedis(config.redis.url, logger);
    const running: RunningProcess = await startProcessTypes(chosen as WorkerProcessType[], config, { logger });
    process.stdout.write(`${await running.ctx.vmm.info()}\n`);
    stopOnSignals((deadline) => running.stop(deadline), logger);
  });

program
  .command('info')
  .description("print the pool table per group (Copr's copr_get_vm_info)")
  .action(async () => {
    const logger = createLogger('vmpool');
    const { config } = resolveConfig(program.opts().config);
    await requireRedis(config.redis.url, logger);
    const vmm = new VmManager(config, { redis: config.redis.url, logger, prefix: process.env.VMPOOL_PREFIX });
    try {
      process.stdout.write(`${await vmm.info()}\n`);
    } finally {
      await vmm.close();
    }
  });

await program.parseAsync(process.argv);
