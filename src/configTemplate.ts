// Kept while src/cli imports it (src/cli/program.ts is being split elsewhere): use ./config/index.js.
export { configTemplate } from './config/index.js';
