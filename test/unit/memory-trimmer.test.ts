import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadLibc } from '../../src/fs/libc.js';
import { MemoryTrimmer } from '../../src/memory-trimmer.js';
import { ManualClock } from '../support/fakes/manual-clock.js';
import { MemoryLog } from '../support/fakes/memory-log.js';

function world(quietMs = 10_000) {
  const clock = new ManualClock();
  const log = new MemoryLog();
  let trims = 0;
  let rss = 100 * 1024 * 1024;
  const order: string[] = [];
  const trimmer = new MemoryTrimmer({
    collectGarbage: () => order.push('gc'),
    trim: () => {
      order.push('trim');
      trims++;
      rss -= 4 * 1024 * 1024;
    },
    clock,
    logger: log.logger(),
    quietMs,
    residentBytes: () => rss,
  });
  return { clock, log, trimmer, order, trims: () => trims };
}

describe('MemoryTrimmer', () => {
  it('does nothing, and holds no timer, until there is activity', async () => {
    const w = world();
    assert.deepEqual(w.clock.pendingDelays(), []);
    await w.clock.advance(60_000);
    assert.equal(w.trims(), 0);
    assert.equal(w.clock.history.length, 0, 'no timer was ever scheduled');
  });

  it('trims once, quietMs after the last of a burst of activity, with one timer at a time', async () => {
    const w = world();
    for (let i = 0; i < 500; i++) {
      w.trimmer.activity();
      await w.clock.advance(10);
    }
    assert.equal(w.clock.pendingDelays().length, 1, 'one timer for the whole burst');
    assert.equal(w.trims(), 0, 'not during the burst');
    // The last activity was at 4,990 ms (now 5,000). The first timer fires at 10 s, sees that, and waits out the rest.
    await w.clock.advance(9_989);
    assert.equal(w.trims(), 0);
    await w.clock.advance(1);
    assert.equal(w.trims(), 1, 'trimmed 10 s after the last activity');
    assert.deepEqual(w.order, ['gc', 'trim'], 'a full collection first, so the Buffers it frees are trimmed too');
    assert.deepEqual(w.clock.pendingDelays(), [], 'and then no timer any more');
    assert.ok(w.clock.history.length <= 3, `few timers in all: ${w.clock.history.length}`);
    assert.deepEqual(
      w.log.withMessage('returned free C heap memory to the kernel after a burst of work').map((e) => [e['rss_before_mib'], e['rss_after_mib']]),
      [[100, 96]],
    );
    // Later activity arms it again.
    w.trimmer.activity();
    await w.clock.advance(10_000);
    assert.equal(w.trims(), 2);
  });

  it('close cancels a pending trim and ignores later activity', async () => {
    const w = world();
    w.trimmer.activity();
    w.trimmer.close();
    assert.deepEqual(w.clock.pendingDelays(), []);
    w.trimmer.activity();
    await w.clock.advance(60_000);
    assert.equal(w.trims(), 0);
  });

  it("this machine's C library has malloc_trim, and calling it works", async () => {
    const libc = await loadLibc();
    assert.equal(typeof libc.mallocTrim, 'function', 'glibc has malloc_trim (the driver image is glibc-based)');
    libc.mallocTrim?.();
  });
});
