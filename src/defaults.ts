import type { ConfigInput, GroupInput } from './config/index.js';

/** The embedded default's group: also what a config file without `groups` gets. */
export const embeddedGroups: GroupInput[] = [
  {
    name: 'local',
    archs: ['x86_64'],
    max_vm_total: 4,
    max_vm_per_user: 2,
    max_spawn_processes: 2,
    vm_spawn_min_interval: 2,
    min_ready: 2,
    vm_health_check_period: 60,
  },
];

/**
 * The embedded default: one group of local "VMs" (detached processes serving SSH on loopback),
 * used when no config file is given, so that a first `npm start` shows the whole system working.
 */
export const embeddedConfig: ConfigInput = {
  vm_cycle_timeout: 5,
  groups: embeddedGroups,
};
