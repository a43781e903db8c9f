import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nextEventLoopTurn } from '../../src/volumes/event-loop-turns.js';

function busyFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // a volume's inline write: nothing to wait on outside the event loop
  }
}

test('turns taken at once run one per event-loop iteration, so I/O and timers get in between', async () => {
  const order: string[] = [];
  const syncs = Array.from({ length: 20 }, (_, i) =>
    nextEventLoopTurn().then(() => {
      // The first sync arms a timer (as an agent message or a CSI call would arrive meanwhile).
      if (i === 0) setTimeout(() => order.push('timer'), 0);
      busyFor(1);
      order.push(`sync ${i}`);
    }),
  );
  await Promise.all(syncs);
  const timerAt = order.indexOf('timer');
  assert.ok(timerAt !== -1 && timerAt < 4, `the timer ran after ${timerAt === -1 ? 'all' : timerAt} of 20 syncs: ${order.join(', ')}`);
  assert.deepEqual(
    order.filter((entry) => entry !== 'timer'),
    Array.from({ length: 20 }, (_, i) => `sync ${i}`),
    'in the order the turns were taken',
  );
});

test('a plain setImmediate per sync would not do: all of them run before the timer (the control)', async () => {
  const order: string[] = [];
  const syncs = Array.from({ length: 20 }, (_, i) =>
    new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      if (i === 0) setTimeout(() => order.push('timer'), 0);
      busyFor(1);
      order.push(`sync ${i}`);
    }),
  );
  await Promise.all(syncs);
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(order.indexOf('timer'), 20);
});
