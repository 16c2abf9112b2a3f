export { VmPoolClient, AcquireAborted, acquireJobId } from './vmPoolClient.js';
export type { VmPoolClientOptions, AcquireOptions, WithVmOptions } from './vmPoolClient.js';
export { TooManyWaiting } from '../pool/types.js';
