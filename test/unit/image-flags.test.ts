import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { DRIVER_NODE_FLAGS } from '../support/driver-harness.js';

const read = (file: string): string => fs.readFileSync(path.join(PACKAGE_ROOT, file), 'utf8');

/** The node command line before the script, from a JSON exec-form array such as ["node","--flag","dist/src/main.js"]. */
function flagsOfExecForm(json: string): string[] {
  const argv = JSON.parse(json) as string[];
  assert.equal(argv[0], 'node');
  assert.equal(argv.at(-1), 'dist/src/main.js');
  return argv.slice(1, -1);
}

describe('node flags', () => {
  it('the Dockerfile, the cluster image, npm start and the tests run the driver with the same V8 flags', () => {
    const dockerfile = read('Dockerfile');
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)?.[1];
    assert.ok(entrypoint, 'the Dockerfile has an exec-form ENTRYPOINT');
    assert.deepEqual(flagsOfExecForm(entrypoint), DRIVER_NODE_FLAGS);
    assert.doesNotMatch(dockerfile, /^ENV NODE_OPTIONS/m, 'flags on the command line only: --no-expose-wasm is refused in NODE_OPTIONS');

    const clusterImage = /oci_image localhost\/spire-csi-driver:e2e "\$root" '(\[.*?\])'/.exec(read('e2e/cluster/images'))?.[1];
    assert.ok(clusterImage, 'e2e/cluster/images builds the driver image with an exec-form entrypoint');
    assert.deepEqual(flagsOfExecForm(clusterImage), DRIVER_NODE_FLAGS);

    const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts['start'];
    assert.equal(start, `node ${DRIVER_NODE_FLAGS.join(' ')} dist/src/main.js`);
  });

  it('this Node.js accepts the flags, prints nothing about them, and runs without a JIT', () => {
    const result = execFileSync(process.execPath, [...DRIVER_NODE_FLAGS, '-e', 'process.stdout.write(String(typeof WebAssembly))'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    assert.equal(result, 'undefined', '--jitless takes WebAssembly away');
    const run = spawnSync(process.execPath, [...DRIVER_NODE_FLAGS, '-e', '0'], { encoding: 'utf8' });
    assert.equal(run.status, 0);
    assert.equal(run.stderr, '', 'no warning (V8 warns about --jitless and WebAssembly unless --no-expose-wasm)');
  });
});
