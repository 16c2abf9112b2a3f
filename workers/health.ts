// The `health` process type: runs the vm-health worker. Config: VMPOOL_CONFIG (else the embedded default).
import { runWorkerProcess } from '../src/jobs/main.js';

await runWorkerProcess(['health']);
