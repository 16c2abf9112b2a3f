import { describe, expect, it } from 'vitest';
import { LAUNCH_FINGERPRINT_LENGTH, launchFingerprint, parseConfig, type GroupInput } from '../../src/config/index.js';

// The launch fingerprint: what shapes a machine changes it; nothing else does, key order neither.
const command = { type: 'command' as const, spawn_cmd: ['/opt/spawn', '--flavor', 'm1'] as string | string[], terminate_cmd: '/opt/terminate', env: { IMAGE: 'fedora-41', ZONE: 'a' } };
const base: GroupInput = {
  name: 'f',
  archs: ['x86_64', 'i386'],
  tags: ['kvm', 'large'],
  provider: command,
  check: { type: 'tcp', port: 22 },
  allowed_networks: ['10.0.0.0/8'],
};
const fingerprintOf = (group: GroupInput) => launchFingerprint(parseConfig({ groups: [group] }).groups[0]!);
const reference = fingerprintOf(base);

describe('launchFingerprint', () => {
  it('is short lowercase hex', () => {
    expect(reference).toMatch(new RegExp(`^[0-9a-f]{${LAUNCH_FINGERPRINT_LENGTH}}$`));
  });

  it.each<[string, GroupInput]>([
    ['the image', { ...base, image: 'fedora-42' }],
    ['launch_revision', { ...base, launch_revision: 1 }],
    ["the provider's env", { ...base, provider: { ...command, env: { IMAGE: 'fedora-42', ZONE: 'a' } } }],
    ['the spawn hook', { ...base, provider: { ...command, spawn_cmd: ['/opt/spawn', '--flavor', 'm2'] } }],
    ['the provider type', { ...base, provider: { type: 'local' } }],
    ['the archs', { ...base, archs: ['x86_64'] }],
    ['the tags', { ...base, tags: ['kvm'] }],
  ])('changes with %s', (_, group) => {
    expect(fingerprintOf(group)).not.toBe(reference);
  });

  it.each<[string, GroupInput]>([
    ['limits and the warm pool', { ...base, max_vm_total: 40, max_vm_per_user: 9, min_ready: 5, max_spawn_processes: 7 }],
    ['timeouts and max_ready_age', { ...base, vm_health_check_period: 5, lease_timeout: 9, vm_dirty_terminating_timeout: 1, max_ready_age: 3600 }],
    ['the terminate hook and the spawn timeout', { ...base, provider: { ...command, terminate_cmd: '/opt/other', spawn_timeout: 5 } }],
    ['the check and the allowed networks', { ...base, check: { type: 'tcp', port: 2222 }, allowed_networks: ['10.1.0.0/16'] }],
    ['the order of keys, env entries, archs and tags', {
      tags: ['large', 'kvm'],
      provider: { env: { ZONE: 'a', IMAGE: 'fedora-41' }, terminate_cmd: '/opt/terminate', spawn_cmd: ['/opt/spawn', '--flavor', 'm1'], type: 'command' },
      archs: ['i386', 'x86_64'],
      allowed_networks: ['10.0.0.0/8'],
      check: { port: 22, type: 'tcp' },
      name: 'f',
    }],
    ['a spawn hook written as a string with the same words', { ...base, provider: { ...command, spawn_cmd: '/opt/spawn  --flavor m1' } }],
    ['the group name', { ...base, name: 'renamed' }],
  ])('does not change with %s', (_, group) => {
    expect(fingerprintOf(group)).toBe(reference);
  });
});
