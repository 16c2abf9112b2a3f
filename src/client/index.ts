export { VmPoolClient, AcquireAborted, SetRequestConflict, acquireJobId } from './vmPoolClient.js';
export type { VmPoolClientOptions, AcquireOptions, WithVmOptions, WithVmSetOptions } from './vmPoolClient.js';
export { TooManyWaiting } from '../pool/types.js';
export { DataFormatTooNew } from '../pool/dataFormatVersion.js';
