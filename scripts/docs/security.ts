// The table of what each token scope may call, in docs/security.md, from the routes' table in code.
import { renderScopeTable } from '../../src/http/scopes.js';
import { replaceGeneratedBlock } from './blocks.js';

export const SCOPES_BLOCK = 'scopes';

export function securityPage(current: string | null): string {
  if (current === null) throw new Error('docs/security.md is missing: it is written by hand around its generated blocks');
  return replaceGeneratedBlock(current, SCOPES_BLOCK, renderScopeTable());
}
