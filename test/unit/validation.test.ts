import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as z from 'zod/mini';
import { convertedString } from '../../src/validation.js';

describe('validation (Zod Mini with English messages)', () => {
  test('checks without a message of their own speak English, as zod does', () => {
    const result = z.string().check(z.maxLength(3)).safeParse('abcd');
    assert.equal(result.success, false);
    assert.equal(result.error?.issues[0]?.message, 'Too big: expected string to have <=3 characters');
    assert.equal(z.string().safeParse(42).error?.issues[0]?.message, 'Invalid input: expected string, received number');
  });

  test('convertedString: the converted value, or the message given to fail', () => {
    const port = convertedString((value, fail) => (/^\d+$/.test(value) ? Number(value) : fail(`must be a number, got "${value}"`)));
    assert.equal(port.parse('8080'), 8080);
    const refused = port.safeParse('http');
    assert.equal(refused.success, false);
    assert.deepEqual(
      refused.error?.issues.map((issue) => [issue.code, issue.message]),
      [['custom', 'must be a number, got "http"']],
    );
    assert.equal(port.safeParse(8080).success, false, 'not a string at all');
  });
});
