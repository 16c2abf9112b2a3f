// The `terminate` process type: runs the vm-terminate worker. Config: VMPOOL_CONFIG (else the embedded default).
import { runWorkerProcess } from '../src/jobs/main.js';

await runWorkerProcess(['terminate']);
