// The `web` process type: API, pool page, Bull Board, metrics. Config: --config FILE, else VMPOOL_CONFIG, else the embedded default.
import { runWebProcess } from '../src/http/server.js';

await runWebProcess(undefined, process.argv.slice(2));
