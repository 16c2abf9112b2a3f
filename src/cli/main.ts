#!/usr/bin/env node
// `vmpool`: the operator's and scripts' CLI. Exit codes: see exitCodes.ts (0 ok, 1 error, 2 usage/config,
// 3 not found, 4 no VM available).
import { runCli } from './program.js';
import { isServing } from './start.js';

const code = await runCli(process.argv.slice(2));
// `start` keeps serving until a signal; every other command is done, so leave at once.
if (!(code === 0 && isServing())) process.exit(code);
