// The `reconcile` process type: runs the vm-reconcile worker and its job scheduler. Config: VMPOOL_CONFIG (else the embedded default).
import { runWorkerProcess } from '../src/jobs/main.js';

await runWorkerProcess(['reconcile']);
