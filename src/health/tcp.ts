import { connect } from 'node:net';
import type { HealthCheck, HealthCheckResult, HealthCheckTarget } from './types.js';

/** Healthy when a TCP connection to the port opens within the timeout. */
export class TcpHealthCheck implements HealthCheck {
  readonly type = 'tcp';

  constructor(private readonly port: number) {}

  check(target: HealthCheckTarget, { timeoutMs }: { timeoutMs: number }): Promise<HealthCheckResult> {
    const where = `tcp ${target.vmIp}:${this.port}`;
    return new Promise((resolve) => {
      let done = false;
      const socket = connect({ host: target.vmIp, port: this.port });
      const finish = (ok: boolean, detail: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        socket.destroy();
        resolve({ ok, detail: `${where}: ${detail}` });
      };
      const timer = setTimeout(() => finish(false, `no connection within ${timeoutMs / 1000}s`), timeoutMs);
      socket.on('connect', () => finish(true, 'connected'));
      socket.on('error', (err) => finish(false, err.message));
    });
  }
}
