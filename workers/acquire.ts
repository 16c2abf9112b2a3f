// The `acquire` process type: runs the vm-acquire worker. Config: VMPOOL_CONFIG (else the embedded default).
import { runWorkerProcess } from '../src/jobs/main.js';

await runWorkerProcess(['acquire']);
