import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { lazyChild, type Logger } from '../../src/observability/logger.js';
import { MemoryLog } from '../support/fakes/memory-log.js';

function counting(logger: Logger): { logger: Logger; children: () => number } {
  let children = 0;
  const counted = Object.create(logger) as Logger;
  counted.child = (bindings) => {
    children += 1;
    return logger.child(bindings);
  };
  return { logger: counted, children: () => children };
}

/** The logged entries without their timestamps. */
function withoutTime(log: MemoryLog): Record<string, unknown>[] {
  return log.entries().map((entry) => {
    const copy = { ...entry };
    delete copy['time'];
    return copy;
  });
}

describe('lazyChild', () => {
  test('its lines are those of parent.child(bindings): the bindings, the fields, the message', () => {
    const log = new MemoryLog();
    const parent = log.logger('debug');
    lazyChild(parent, { volume_id: 'csi-1', pod: 'ns/p' }).info({ tmpfs: true }, 'published');
    parent.child({ volume_id: 'csi-1', pod: 'ns/p' }).info({ tmpfs: true }, 'published');
    lazyChild(parent, { volume_id: 'csi-2' }).warn('plain message');
    const [lazy, eager, plain] = withoutTime(log);
    assert.deepEqual(lazy, eager);
    assert.deepEqual(plain, { level: 'warn', volume_id: 'csi-2', msg: 'plain message' });
  });

  test('a line below the level makes no child; a child of it keeps both sets of bindings', () => {
    const log = new MemoryLog();
    const { logger, children } = counting(log.logger('info'));
    const volumeLogger = lazyChild(logger, { volume_id: 'csi-1' });
    assert.equal(children(), 0, 'nothing is made up front');
    volumeLogger.debug({ tmpfs: true }, 'not logged at info');
    assert.equal(children(), 0);
    volumeLogger.child({ pod: 'ns/p' }).error('failed');
    assert.equal(children(), 1);
    assert.deepEqual(withoutTime(log), [{ level: 'error', volume_id: 'csi-1', pod: 'ns/p', msg: 'failed' }]);
  });
});
