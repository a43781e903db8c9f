import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { PACKAGE_ROOT } from '../../src/proto-loading.js';
import { DRIVER_NODE_FLAGS } from '../support/driver-harness.js';

describe('node flags', () => {
  it('the image runs the driver with the same V8 flags the tests and benchmarks use', () => {
    const dockerfile = fs.readFileSync(path.join(PACKAGE_ROOT, 'Dockerfile'), 'utf8');
    const nodeOptions = /^ENV NODE_OPTIONS=(.*)$/m.exec(dockerfile)?.[1]?.replace(/"/g, '');
    assert.equal(nodeOptions, DRIVER_NODE_FLAGS.join(' '));
  });
});
