// Copies the non-TypeScript files that the built code loads at run time (Lua scripts) into dist/.
import { cpSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function copyLua(dir) {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) copyLua(path);
    else if (entry.endsWith('.lua')) cpSync(path, join('dist', path));
  }
}
copyLua('src');
