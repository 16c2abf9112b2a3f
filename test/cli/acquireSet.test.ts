import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import { parseVmSpecs } from '../../src/cli/commands/acquireSet.js';
import { CliError, ExitCodes } from '../../src/cli/exitCodes.js';
import { processTypeSpecs } from '../../src/processors/index.js';
import { startProcessTypes, type RunningProcess } from '../../src/runtime/boot.js';
import { VmManager } from '../../src/pool/vmManager.js';
import { acquireSetRequestId } from '../../queues/acquire.js';
import { runVmpoolCli, writeConfigFile } from '../helpers/processes.js';
import { REDIS_URL, connect, deleteKeysWithPrefix, uniquePrefix } from '../helpers/redis.js';

// `vmpool acquire-set`: the --vm syntax (parsed without Redis), and the real command as a
// subprocess against the real acquire worker and Redis.
const configInput = {
  redis: { url: REDIS_URL },
  groups: [
    { name: 'base', archs: ['x86_64'], max_vm_per_user: 3, tags: ['ssd'] },
    { name: 'big', archs: ['x86_64'], max_vm_per_user: 3, tags: ['gpu', 'ssd'] },
    { name: 'arm', archs: ['aarch64'], max_vm_per_user: 3 },
  ],
  web: { port: 0 },
};
const cfg = parseConfig(configInput, {});

const usage = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CliError);
    expect((err as CliError).exitCode).toBe(ExitCodes.USAGE);
    return (err as Error).message;
  }
  throw new Error('no usage error');
};

describe('vmpool acquire-set --vm syntax', () => {
  it('reads groups (names or ids, in order), arch, tags and count, in the order given', () => {
    expect(parseVmSpecs(cfg, ['group=big,0', 'arch=aarch64', 'tags=gpu', 'arch=x86_64,tags=ssd,count=2'])).toEqual([
      { groups: ['big', 'base'] },
      { arch: 'aarch64' },
      { tags: ['gpu'] },
      { arch: 'x86_64', tags: ['ssd'] },
      { arch: 'x86_64', tags: ['ssd'] },
    ]);
    // Spellings: groups=, tag=; --tag adds to every VM.
    expect(parseVmSpecs(cfg, ['groups=base', 'tag=gpu'], ['ssd'])).toEqual([{ groups: ['base'], tags: ['ssd'] }, { tags: ['gpu', 'ssd'] }]);
    // A pool of one group: a spec with only count takes it.
    expect(parseVmSpecs(parseConfig({ groups: [{ name: 'only', archs: ['x86_64'] }] }, {}), ['count=2'])).toEqual([{ groups: ['only'] }, { groups: ['only'] }]);
  });

  it('refuses anything else with a usage error that says why', () => {
    expect(usage(() => parseVmSpecs(cfg, []))).toContain('--vm');
    expect(usage(() => parseVmSpecs(cfg, ['base']))).toContain('"base" is not key=value');
    expect(usage(() => parseVmSpecs(cfg, ['grp=base']))).toContain('unknown key "grp"');
    expect(usage(() => parseVmSpecs(cfg, ['group=base,group=big']))).toContain('group given twice');
    expect(usage(() => parseVmSpecs(cfg, ['group=']))).toContain('needs a value');
    expect(usage(() => parseVmSpecs(cfg, ['group=base,,big']))).toContain('empty value');
    expect(usage(() => parseVmSpecs(cfg, ['group=base,arch=x86_64']))).toContain('not both');
    expect(usage(() => parseVmSpecs(cfg, ['arch=x86_64,aarch64']))).toContain('one arch');
    expect(usage(() => parseVmSpecs(cfg, ['arch=x86_64,count=0']))).toContain('count must be a whole number from 1 to 32');
    expect(usage(() => parseVmSpecs(cfg, ['arch=x86_64,count=1.5']))).toContain('count must be');
    expect(usage(() => parseVmSpecs(cfg, ['arch=x86_64,count=20', 'arch=x86_64,count=13']))).toContain('at most 32 VMs (asked for 33)');
    expect(usage(() => parseVmSpecs(cfg, ['count=2']))).toContain('groups: base, big, arm');
    expect(usage(() => parseVmSpecs(cfg, ['group=nosuch']))).toContain('nosuch');
    expect(usage(() => parseVmSpecs(cfg, ['arch=sparc']))).toContain('no group lists arch "sparc"');
    expect(usage(() => parseVmSpecs(cfg, ['arch=aarch64,tags=gpu']))).toContain('every tag');
    expect(usage(() => parseVmSpecs(cfg, ['tags=quantum']))).toContain('unknown tag "quantum"');
  });
});

describe('vmpool acquire-set', { timeout: 60_000 }, () => {
  const prefix = uniquePrefix('cli-set');
  const configFile = writeConfigFile(configInput);
  const env = { ...process.env, VMPOOL_PREFIX: prefix, LOG_LEVEL: 'silent', VMPOOL_ACQUIRE_GRACE_MS: '1000' };
  const vmpool = (...args: string[]) => runVmpoolCli(['--config', configFile, ...args], env);
  const redis = connect();
  const vmm = new VmManager(cfg, { redis, prefix });
  let acquireWorker: RunningProcess | undefined;
  const addReady = async (name: string, ip: string, group: string) => {
    await vmm.addVmToPool(ip, name, group);
    await vmm.startVmCheck(name);
    await vmm.recordHealthCheckResult(name, true);
  };

  beforeAll(async () => {
    await vmm.markServerStart();
    const unused = () => {
      throw new Error('unused');
    };
    acquireWorker = await startProcessTypes(processTypeSpecs, ['acquire'], cfg, { prefix, providerFactory: unused, healthCheckFactory: unused });
  });
  afterAll(async () => {
    await acquireWorker?.stop(5_000);
    await deleteKeysWithPrefix(redis, prefix);
    await vmm.close();
    await redis.quit();
  });

  it('usage errors exit 2 and enqueue nothing', async () => {
    const runs = await Promise.all([
      vmpool('acquire-set', '--owner', 'a', '--sandbox', 's'),
      vmpool('acquire-set', '--owner', 'a', '--sandbox', 's', '--vm', 'base'),
      vmpool('acquire-set', '--owner', 'a', '--sandbox', 's', '--vm', 'arch=sparc'),
      vmpool('acquire-set', '--owner', 'a', '--sandbox', 's', '--vm', 'arch=x86_64', '--timeout', 'soon'),
    ]);
    for (const run of runs) expect(run.code, run.stderr).toBe(2);
    expect(runs[1]!.stderr).toContain('is not key=value');
    expect(await redis.keys(`${prefix}:vm-acquire:set-*`)).toEqual([]);
  });

  it('prints every VM of the set (name, ip, group, lease); 4 when the whole set does not come; --json; why shows it', async () => {
    await addReady('x1', '10.61.0.1', 'base');
    await addReady('r1', '10.61.1.1', 'arm');
    const none = await vmpool('acquire-set', '--owner', 'dave', '--sandbox', 's', '--vm', 'group=base,count=2', '--vm', 'arch=aarch64', '--timeout', '0.5');
    expect(none.code, none.stderr).toBe(4);
    // Nothing was taken for it.
    expect((await vmm.getVmByName('x1')).state).toBe('ready');

    const got = await vmpool('acquire-set', '--owner', 'dave', '--sandbox', 's', '--vm', 'arch=x86_64', '--vm', 'arch=aarch64', '--timeout', '10', '--request-id', 'cli-1');
    expect(got.code, got.stderr).toBe(0);
    const vars = Object.fromEntries(got.stdout.trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
    expect(vars).toMatchObject({ VM_COUNT: '2', VM_NAME_0: 'x1', VM_IP_0: '10.61.0.1', GROUP_0: 'base', VM_NAME_1: 'r1', VM_IP_1: '10.61.1.1', GROUP_1: 'arm' });
    expect((await vmm.getVmRecord('x1')).leaseId).toBe(vars.LEASE_ID_0);
    expect((await vmm.getVmRecord('r1')).leaseId).toBe(vars.LEASE_ID_1);
    expect(Number(vars.LEASE_EXPIRES_AT_0)).toBeGreaterThan(Date.now());

    // The same request id again: the same VMs, as JSON.
    const again = await vmpool('acquire-set', '--owner', 'dave', '--sandbox', 's', '--vm', 'arch=x86_64', '--vm', 'arch=aarch64', '--timeout', '10', '--request-id', 'cli-1', '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).vms.map((v: { vmName: string; leaseId: string }) => [v.vmName, v.leaseId])).toEqual([
      ['x1', vars.LEASE_ID_0],
      ['r1', vars.LEASE_ID_1],
    ]);

    const why = await vmpool('why', 'cli-1', '--owner', 'dave');
    expect(why.code, why.stderr).toBe(0);
    expect(why.stdout).toContain(`request ${acquireSetRequestId('dave', 'cli-1')} (set of 2 VMs, request cli-1) of dave`);
    expect(why.stdout).toContain('assigned: VMs x1 (10.61.0.1), r1 (10.61.1.1)');

    for (const [name, lease] of [
      ['x1', vars.LEASE_ID_0!],
      ['r1', vars.LEASE_ID_1!],
    ] as const) {
      expect((await vmpool('release', name, '--lease-id', lease)).code).toBe(0);
    }
  });

  it('why says why a set waits; cancel withdraws it, and the waiting acquire-set exits 1', async () => {
    // 'arm' has one VM, r1, released bound to dave's sandbox: eve's two never come.
    const waiting = vmpool('acquire-set', '--owner', 'eve', '--sandbox', 's', '--vm', 'group=arm,count=2', '--timeout', '20', '--request-id', 'w-1');
    let why = { code: -1, stdout: '', stderr: '' };
    const end = Date.now() + 20_000;
    while (!why.stdout.includes(': waiting')) {
      if (Date.now() > end) throw new Error(`the set never waited: ${why.stdout}${why.stderr}`);
      why = await vmpool('why', 'w-1', '--owner', 'eve');
    }
    expect(why.stdout).toContain(`request ${acquireSetRequestId('eve', 'w-1')} (set of 2 VMs, request w-1) of eve`);
    expect(why.stdout).toContain('waits because:');
    // r1, arm's one VM, is bound to dave's sandbox: neither of eve's VMs can be had now.
    expect(why.stdout).toContain('\nVMs 1, 2 of 2 (arm) cannot be had now\n');
    const cancel = await vmpool('cancel', acquireSetRequestId('eve', 'w-1'));
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(cancel.stdout).toContain('withdrew request');
    const ended = await waiting;
    expect(ended.code).toBe(1);
    expect(ended.stderr).toContain('cancelled');
  });
});
