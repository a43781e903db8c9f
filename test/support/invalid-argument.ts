import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { DriverError } from '../../src/errors.js';

/** Runs `fn`, asserts it throws INVALID_ARGUMENT matching every pattern, and returns the message. */
export function expectInvalidArgument(fn: () => unknown, ...patterns: RegExp[]): string {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof DriverError, `expected a DriverError, got ${String(caught)}`);
  assert.equal(caught.code, status.INVALID_ARGUMENT, caught.message);
  for (const pattern of patterns) assert.match(caught.message, pattern);
  return caught.message;
}
