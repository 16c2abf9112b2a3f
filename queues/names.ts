/** Every BullMQ queue of vmpool. All live under the configured prefix. */
export const QueueNames = {
  ACQUIRE: 'vm-acquire',
  SPAWN: 'vm-spawn',
  HEALTH: 'vm-health',
  TERMINATE: 'vm-terminate',
  RECONCILE: 'vm-reconcile',
} as const;

export type QueueName = (typeof QueueNames)[keyof typeof QueueNames];
export const ALL_QUEUE_NAMES: readonly QueueName[] = Object.values(QueueNames);
