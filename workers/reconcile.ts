// The `reconcile` process type: runs the vm-reconcile worker and its job scheduler. Config: --config FILE, else VMPOOL_CONFIG, else the embedded default.
import { processTypeSpecs } from '../src/processors/index.js';
import { runWorkerProcess } from '../src/runtime/main.js';

await runWorkerProcess(processTypeSpecs, ['reconcile']);
