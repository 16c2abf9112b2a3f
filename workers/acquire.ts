// The `acquire` process type: runs the vm-acquire worker. Config: --config FILE, else VMPOOL_CONFIG, else the embedded default.
import { processTypeSpecs } from '../src/processors/index.js';
import { runWorkerProcess } from '../src/runtime/main.js';

await runWorkerProcess(processTypeSpecs, ['acquire']);
