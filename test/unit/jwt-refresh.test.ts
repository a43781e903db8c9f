/**
 * The JWT refresh schedule (src/volumes/jwt-refresh.ts) on a manual clock: one
 * timer per volume, at half of the remaining lifetime (jittered up by up to
 * a tenth of it), a capped backoff after failures, nothing left after close().
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { JwtSvidMessage } from '../../src/spire/messages.js';
import { JWT_MIN_REFRESH_MS, JWT_RETRY_INITIAL_MS, JWT_RETRY_MAX_MS, JwtRefresher } from '../../src/volumes/jwt-refresh.js';
import type { JwtSvidRequest } from '../../src/volumes/jwt-attributes.js';
import { ManualClock, settle } from '../support/fakes/manual-clock.js';

/** Wall-clock time follows the manual clock, from a fixed epoch. */
const EPOCH_MS = Date.UTC(2026, 0, 1);

interface Harness {
  clock: ManualClock;
  refresher: JwtRefresher;
  fetches: (readonly string[])[];
  failures: { attempt: number; retryInMs: number }[];
  tokens: () => number;
  /** What the next fetches do: a lifetime in seconds for a token issued now, or an error. */
  next: (number | Error)[];
}

function harness(requests: JwtSvidRequest[], random: () => number): Harness {
  const clock = new ManualClock();
  const wallClock = (): number => EPOCH_MS + clock.now();
  const fetches: (readonly string[])[] = [];
  const failures: Harness['failures'] = [];
  let tokenUpdates = 0;
  const next: (number | Error)[] = [];
  const refresher = new JwtRefresher({
    requests,
    fetch: (audiences) => {
      fetches.push(audiences);
      const outcome = next.shift() ?? 600;
      if (outcome instanceof Error) return Promise.reject(outcome);
      const now = Math.floor(wallClock() / 1000);
      const svid: JwtSvidMessage = {
        token: 'x.y.z',
        id: { trust_domain: 'example.org', path: '/w' },
        issued_at: now,
        expires_at: now + outcome,
        hint: '',
      };
      return Promise.resolve([svid]);
    },
    schedule: clock.schedule,
    wallClock,
    random,
    onTokens: () => (tokenUpdates += 1),
    onFailure: (_err, attempt, retryInMs) => failures.push({ attempt, retryInMs }),
  });
  return { clock, refresher, fetches, failures, tokens: () => tokenUpdates, next };
}

const ONE: JwtSvidRequest[] = [{ file: 'jwt_svid.token', audiences: ['vault'] }];

describe('JWT refresh schedule', () => {
  test('fetches at once, then at half the remaining lifetime; one timer at any time', async () => {
    const h = harness(ONE, () => 0);
    h.refresher.start();
    await settle();
    assert.deepEqual(h.fetches, [['vault']]);
    assert.equal(h.tokens(), 1);
    // A 600 s token: next fetch 300 s later, no jitter with random() = 0.
    assert.deepEqual(h.clock.pendingDelays(), [300_000]);
    await h.clock.advance(299_999);
    assert.equal(h.fetches.length, 1, 'nothing before the refresh point');
    await h.clock.advance(1);
    assert.equal(h.fetches.length, 2);
    assert.equal(h.tokens(), 2);
    assert.deepEqual(h.clock.pendingDelays(), [300_000]);
    h.refresher.close();
    assert.deepEqual(h.clock.pendingDelays(), []);
  });

  test('the jitter only ever makes the refresh later (past the agent cache half-life): 50 % to 60 % of the remaining lifetime', () => {
    const latest = harness(ONE, () => 1);
    const soonest = harness(ONE, () => 0);
    const now = Math.floor((EPOCH_MS + 0) / 1000);
    const svid: JwtSvidMessage = { token: 't', id: null, issued_at: now, expires_at: now + 1000, hint: '' };
    assert.equal(latest.refresher.nextRefreshDelay([svid]), 600_000);
    assert.equal(soonest.refresher.nextRefreshDelay([svid]), 500_000);
  });

  test('several tokens share one timer, due at the shortest-lived one', async () => {
    const h = harness(
      [
        { file: 'a.token', audiences: ['a'] },
        { file: 'b.token', audiences: ['b', 'c'] },
      ],
      () => 0,
    );
    h.next.push(600, 120);
    h.refresher.start();
    await settle();
    assert.deepEqual(h.fetches, [['a'], ['b', 'c']]);
    assert.equal(h.tokens(), 1, 'one update for the pair, so one write');
    assert.deepEqual(h.clock.pendingDelays(), [60_000]);
    h.refresher.close();
  });

  test('a token (nearly) expired on arrival does not make a tight loop', async () => {
    const h = harness(ONE, () => 0);
    h.next.push(0);
    h.refresher.start();
    await settle();
    assert.deepEqual(h.clock.pendingDelays(), [JWT_MIN_REFRESH_MS]);
    h.refresher.close();
  });

  test('failures retry with a capped backoff on the same single timer, and success resets it', async () => {
    const h = harness(ONE, () => 1);
    const unavailable = new Error('14 UNAVAILABLE: could not fetch JWT-SVID');
    h.next.push(...Array.from({ length: 10 }, () => unavailable));
    h.refresher.start();
    await settle();
    for (let i = 0; i < 9; i++) {
      assert.equal(h.clock.pendingDelays().length, 1);
      await h.clock.advance(h.clock.nextDueIn() ?? 0);
    }
    const delays = h.failures.map((f) => f.retryInMs);
    assert.equal(delays[0], JWT_RETRY_INITIAL_MS);
    assert.deepEqual(delays.slice(0, 4), [1000, 2000, 4000, 8000]);
    assert.equal(Math.max(...delays), JWT_RETRY_MAX_MS);
    assert.deepEqual(
      h.failures.map((f) => f.attempt),
      Array.from({ length: 10 }, (_, i) => i + 1),
    );
    assert.equal(h.tokens(), 0);
    await h.clock.advance(h.clock.nextDueIn() ?? 0);
    assert.equal(h.tokens(), 1);
    assert.equal(h.refresher.failedAttempts, 0);
    assert.deepEqual(h.clock.pendingDelays(), [360_000], 'back on the lifetime schedule (random() = 1: 60 %)');
    h.refresher.close();
  });

  test('close() during a fetch leaves no timer and reports nothing', async () => {
    const h = harness(ONE, () => 0);
    h.refresher.start();
    h.refresher.close();
    await settle();
    assert.deepEqual(h.clock.pendingDelays(), []);
    assert.equal(h.tokens(), 0);
    assert.ok(h.clock.history.every((timer) => timer.state !== 'pending'));
  });

  test('refreshNow() replaces the pending timer instead of adding one', async () => {
    const h = harness(ONE, () => 0);
    h.refresher.start();
    await settle();
    h.refresher.refreshNow();
    await settle();
    assert.equal(h.fetches.length, 2);
    assert.equal(h.clock.pendingDelays().length, 1);
    h.refresher.close();
  });
});
