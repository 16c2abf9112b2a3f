/** Where the CLI writes and which environment it reads (the process's own, or a test's). */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  env: NodeJS.ProcessEnv;
  /** The clock (epoch ms) for what the CLI computes itself, such as a schedule's next 24 hours. */
  now?: () => number;
  /** Stops a command that runs until interrupted (`events --follow`); without it, SIGINT or SIGTERM does. */
  signal?: AbortSignal;
}

export const defaultIo: CliIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  env: process.env,
};
