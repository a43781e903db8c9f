import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { DRIVER_NODE_FLAGS } from '../support/driver-harness.js';

const MAIN = path.join(PACKAGE_ROOT, 'dist', 'src', 'main.js');

describe('dist/src/main.js is the bundle that ships (scripts/bundle-driver.mjs)', () => {
  it('imports nothing but Node.js built-ins and koffi, so it runs the code it holds and not tsc’s other files', () => {
    const source = fs.readFileSync(MAIN, 'utf8');
    // Static `import … from "x"`, bare `import "x"` and dynamic `import("x")`, in minified or plain form.
    const specifiers = [
      ...source.matchAll(/\bimport(?:\s*\(\s*|\s*\{[^}]*\}\s*from\s*|\s+[\w$*]+(?:\s+as\s+[\w$]+)?\s+from\s*|\s*)["']([@\w.:/-]+)["']/g),
    ].map((m) => m[1] as string);
    assert.ok(specifiers.length > 0);
    const foreign = specifiers.filter((s) => !s.startsWith('node:') && s !== 'koffi');
    assert.deepEqual(foreign, [], 'no relative or package imports besides koffi');
    assert.ok(fs.existsSync(`${MAIN}.map`), 'its source map is next to it, for reading a crash stack');
    assert.doesNotMatch(source, /sourceMappingURL/, 'and is not loaded at run time');
  });

  it('runs with the image flags: --version and --help', () => {
    const version = spawnSync(process.execPath, [...DRIVER_NODE_FLAGS, MAIN, '--version'], { encoding: 'utf8' });
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, /^\d+\.\d+\.\d+/);
    assert.equal(version.stderr, '');
    const help = spawnSync(process.execPath, [...DRIVER_NODE_FLAGS, MAIN, '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /--admin-socket/);
  });
});
