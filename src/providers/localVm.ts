/**
 * One local "VM": a detached process that serves real SSH on a loopback address. Started by the
 * local provider (local.ts) as `node localVm.js --state-dir D --name N --group G --pool ID --ip I --port P --authorized-key F`.
 * It accepts public-key logins (any user) with the key in F only, runs each exec request with
 * /bin/sh in its own work dir, and writes its state file once it listens. SIGTERM stops it.
 */
import { spawn } from 'node:child_process';
import { timingSafeEqual } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import ssh2 from 'ssh2';
import { generateSshKeyPair } from './sshKeyPair.js';

const { Server, utils } = ssh2;

function main(): void {
  const { values } = parseArgs({
    options: {
      'state-dir': { type: 'string' },
      name: { type: 'string' },
      group: { type: 'string' },
      pool: { type: 'string' },
      ip: { type: 'string' },
      port: { type: 'string' },
      'authorized-key': { type: 'string' },
    },
  });
  const stateDir = values['state-dir'];
  const name = values.name;
  const ip = values.ip;
  const port = Number(values.port);
  const authorizedKeyFile = values['authorized-key'];
  if (!stateDir || !name || !ip || !Number.isInteger(port) || !authorizedKeyFile) {
    console.error('usage: localVm --state-dir D --name N --ip I --port P --authorized-key F');
    process.exit(2);
  }

  const clientKey = utils.parseKey(readFileSync(authorizedKeyFile));
  if (clientKey instanceof Error) throw clientKey;
  const allowed = clientKey.getPublicSSH();
  const hostKey = generateSshKeyPair();
  const workDir = join(stateDir, 'work', name);
  mkdirSync(workDir, { recursive: true, mode: 0o700 });

  const server = new Server({ hostKeys: [hostKey.private] }, (client) => {
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey') return ctx.reject(['publickey']);
      const given = Buffer.from(ctx.key.data);
      const ok = ctx.key.algo === clientKey.type && given.length === allowed.length && timingSafeEqual(given, allowed);
      if (!ok) return ctx.reject(['publickey']);
      // Without a signature the client only asks whether the key would do.
      if (ctx.signature && !clientKey.verify(ctx.blob!, ctx.signature, ctx.hashAlgo)) return ctx.reject(['publickey']);
      ctx.accept();
    });
    client.on('session', (accept) => {
      const session = accept();
      session.on('pty', (acceptPty) => acceptPty?.());
      session.on('env', (acceptEnv) => acceptEnv?.());
      session.on('exec', (acceptExec, _reject, info) => {
        const stream = acceptExec();
        const child = spawn('/bin/sh', ['-c', info.command], { cwd: workDir, stdio: ['pipe', 'pipe', 'pipe'] });
        stream.pipe(child.stdin!);
        child.stdout!.pipe(stream, { end: false });
        child.stderr!.pipe(stream.stderr, { end: false });
        child.on('error', () => {
          stream.exit(127);
          stream.end();
        });
        child.on('close', (code, signal) => {
          if (signal) stream.exit(signal.replace(/^SIG/, ''), false, '');
          else stream.exit(code ?? 1);
          stream.end();
        });
      });
    });
    client.on('error', () => {
      // A client that went away; nothing to do.
    });
  });

  server.on('error', (err: Error) => {
    console.error(`local VM ${name}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, ip, () => {
    const state = {
      pid: process.pid,
      name,
      group: values.group ?? '',
      pool: values.pool ?? '',
      ip,
      port,
      created_at: Date.now(),
      host_key: hostKey.public,
    };
    const file = join(stateDir, 'vms', `${name}.json`);
    writeFileSync(`${file}.tmp`, JSON.stringify(state));
    renameSync(`${file}.tmp`, file);
    console.log(`local VM ${name} listening on ${ip}:${port}`);
  });

  const stop = () => {
    server.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Detached from the worker that started it: a hangup of that terminal must not stop the VM.
  process.on('SIGHUP', () => {});
}

try {
  main();
} catch (err) {
  // One line: the spawner shows the log's last lines, and a stack trace would push the cause out.
  console.error(`local VM could not start: ${(err as Error).message}`);
  process.exit(1);
}
