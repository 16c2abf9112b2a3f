export * from './names.js';
export * from './acquire.js';
export * from './spawn.js';
export * from './health.js';
export * from './terminate.js';
export * from './reconcile.js';
