// The `spawn` process type: runs the vm-spawn worker. Config: VMPOOL_CONFIG (else the embedded default).
import { runWorkerProcess } from '../src/jobs/main.js';

await runWorkerProcess(['spawn']);
