import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Backoff } from '../../src/spire/backoff.js';

function delays(backoff: Backoff, count: number): number[] {
  return Array.from({ length: count }, () => backoff.next());
}

/** A deterministic stand-in for Math.random: a small LCG in [0, 1). */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

describe('growth', () => {
  test('with the top of the jitter range each delay is the full ceiling, doubling', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 100_000, random: () => 1 });
    assert.deepEqual(delays(backoff, 6), [100, 200, 400, 800, 1600, 3200]);
  });

  test('with the bottom of the jitter range each delay is half the ceiling', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 100_000, random: () => 0 });
    assert.deepEqual(delays(backoff, 6), [50, 100, 200, 400, 800, 1600]);
  });

  test('a custom factor', () => {
    const backoff = new Backoff({ initialMs: 10, maxMs: 100_000, factor: 3, random: () => 1 });
    assert.deepEqual(delays(backoff, 5), [10, 30, 90, 270, 810]);
  });

  test('the default factor is 2', () => {
    const backoff = new Backoff({ initialMs: 1, maxMs: 1_000_000, random: () => 1 });
    assert.deepEqual(delays(backoff, 4), [1, 2, 4, 8]);
  });
});

describe('cap', () => {
  test('the ceiling stops at maxMs', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
    assert.deepEqual(delays(backoff, 8), [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
  });

  test('capped delays still carry jitter, between half and all of maxMs', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
    assert.deepEqual(delays(backoff, 7), [50, 100, 200, 400, 500, 500, 500]);
  });

  test('thousands of attempts stay at the cap (no overflow to Infinity or NaN)', () => {
    const backoff = new Backoff({ initialMs: 250, maxMs: 30_000, random: () => 1 });
    const all = delays(backoff, 5000);
    assert.ok(all.every((d) => Number.isFinite(d)));
    assert.ok(all.slice(10).every((d) => d === 30_000));
  });

  test('an initial delay above the cap is capped from the first attempt', () => {
    const backoff = new Backoff({ initialMs: 5000, maxMs: 1000, random: () => 1 });
    assert.deepEqual(delays(backoff, 3), [1000, 1000, 1000]);
  });
});

describe('jitter', () => {
  test('every delay lies between half the ceiling and the full ceiling', () => {
    const initialMs = 200;
    const maxMs = 30_000;
    const backoff = new Backoff({ initialMs, maxMs, random: seededRandom(42) });
    for (let attempt = 0; attempt < 200; attempt++) {
      const ceiling = Math.min(maxMs, initialMs * 2 ** attempt);
      const delay = backoff.next();
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}: ${delay} not in [${ceiling / 2}, ${ceiling}]`);
    }
  });

  test('the random part is proportional: 0.5 gives three quarters of the ceiling', () => {
    const backoff = new Backoff({ initialMs: 400, maxMs: 100_000, random: () => 0.5 });
    assert.deepEqual(delays(backoff, 3), [300, 600, 1200]);
  });

  test('delays are whole milliseconds', () => {
    const backoff = new Backoff({ initialMs: 3, maxMs: 1000, random: seededRandom(7) });
    for (const delay of delays(backoff, 50)) assert.ok(Number.isInteger(delay), String(delay));
  });

  test('streams that failed together spread out', () => {
    const random = seededRandom(1);
    const first = Array.from({ length: 100 }, () => new Backoff({ initialMs: 1000, maxMs: 30_000, random }).next());
    assert.ok(new Set(first).size > 50, `only ${new Set(first).size} distinct first delays out of 100`);
    assert.ok(first.every((d) => d >= 500 && d <= 1000));
  });

  test('random is called once per delay', () => {
    let calls = 0;
    const backoff = new Backoff({
      initialMs: 10,
      maxMs: 100,
      random: () => {
        calls += 1;
        return 0.25;
      },
    });
    delays(backoff, 7);
    assert.equal(calls, 7);
  });

  test('without an injected random, Math.random keeps delays in bounds', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000 });
    for (let attempt = 0; attempt < 20; attempt++) {
      const ceiling = Math.min(1000, 100 * 2 ** attempt);
      const delay = backoff.next();
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}: ${delay}`);
    }
  });
});

describe('reset', () => {
  test('reset starts the schedule over', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
    assert.deepEqual(delays(backoff, 5), [100, 200, 400, 800, 1000]);
    backoff.reset();
    assert.deepEqual(delays(backoff, 3), [100, 200, 400]);
  });

  test('reset before any delay is harmless, and repeated resets too', () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
    backoff.reset();
    backoff.reset();
    assert.equal(backoff.next(), 100);
    backoff.reset();
    assert.equal(backoff.next(), 100);
  });

  test('two instances do not share state', () => {
    const a = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
    const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
    delays(a, 4);
    assert.equal(b.next(), 100);
    assert.equal(a.next(), 1000);
  });
});
