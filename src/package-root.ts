import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** Repository root, found relative to this file (works from src/ and dist/src/). */
export const PACKAGE_ROOT = findPackageRoot();

function findPackageRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // src/package-root.ts -> <root>/src ; dist/src/package-root.js (or the bundle, dist/src/main.js) -> <root>/dist/src
  return path.basename(path.dirname(here)) === 'dist' ? path.resolve(here, '..', '..') : path.resolve(here, '..');
}
