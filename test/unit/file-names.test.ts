import assert from 'node:assert/strict';
import { test } from 'node:test';
import { describeFileNameProblem, MAX_FILE_NAME_BYTES } from '../../src/fs/file-names.js';

test('plain names are accepted', () => {
  for (const name of [
    'svid.pem',
    'svid_key.pem',
    'tls.crt',
    'ca.crt',
    'a',
    'x..y',
    'name.',
    'example.org.spiffe-trust-bundle.x509.pem',
    'schlüssel.pem',
  ]) {
    assert.equal(describeFileNameProblem(name), undefined, name);
  }
});

test('an empty name is refused', () => {
  assert.match(describeFileNameProblem('') ?? '', /empty/);
});

test('a name with "/" is refused', () => {
  for (const name of ['a/b', '/etc/passwd', 'dir/', '/']) {
    assert.match(describeFileNameProblem(name) ?? '', /contains "\/"/, name);
  }
});

test('"." and ".." are refused', () => {
  assert.notEqual(describeFileNameProblem('.'), undefined);
  assert.notEqual(describeFileNameProblem('..'), undefined);
});

test('names starting with "." are refused, including the reserved ".." names', () => {
  for (const name of ['.hidden', '..data', '..data_tmp', '..2026_08_22_10_00_00.abc', '...']) {
    assert.match(describeFileNameProblem(name) ?? '', /starts with "\."/, name);
  }
});

test('a NUL character is refused', () => {
  assert.match(describeFileNameProblem('svid\0.pem') ?? '', /NUL/);
});

test('a lone surrogate is refused', () => {
  assert.match(describeFileNameProblem('key\uD800.pem') ?? '', /Unicode/);
});

test('the 255-byte limit counts UTF-8 bytes, not characters', () => {
  assert.equal(MAX_FILE_NAME_BYTES, 255);
  assert.equal(describeFileNameProblem('a'.repeat(255)), undefined);
  assert.match(describeFileNameProblem('a'.repeat(256)) ?? '', /256 bytes/);

  // "é" is 2 bytes: 127 of them plus one ASCII byte is 255 bytes in 128 characters.
  const twoByte = 'é'.repeat(127) + 'a';
  assert.equal(Buffer.byteLength(twoByte), 255);
  assert.equal(describeFileNameProblem(twoByte), undefined);
  const twoByteTooLong = 'é'.repeat(128);
  assert.equal(twoByteTooLong.length, 128);
  assert.match(describeFileNameProblem(twoByteTooLong) ?? '', /256 bytes/);

  // "€" is 3 bytes: 85 of them is exactly 255; one more ASCII byte is too many.
  assert.equal(describeFileNameProblem('€'.repeat(85)), undefined);
  assert.match(describeFileNameProblem('€'.repeat(85) + 'a') ?? '', /256 bytes/);

  // An emoji is 4 bytes but 2 UTF-16 units.
  assert.equal(describeFileNameProblem('🔑'.repeat(63) + 'abc'), undefined);
  assert.match(describeFileNameProblem('🔑'.repeat(64)) ?? '', /256 bytes/);
});
