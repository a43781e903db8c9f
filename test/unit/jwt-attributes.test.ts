import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseVolumeAttributes } from '../../src/volumes/attributes.js';
import { DEFAULT_JWT_BUNDLE_FILE, DEFAULT_JWT_SVID_FILE, MAX_AUDIENCES_PER_JWT_SVID, MAX_JWT_SVIDS } from '../../src/volumes/jwt-attributes.js';
import { expectInvalidArgument } from '../support/invalid-argument.js';

function jwtOf(attributes: Record<string, string>): ReturnType<typeof parseVolumeAttributes>['jwt'] {
  return parseVolumeAttributes(attributes).jwt;
}

function rejected(attributes: Record<string, string>, ...patterns: RegExp[]): string {
  return expectInvalidArgument(() => parseVolumeAttributes(attributes), ...patterns);
}

const AUDIENCES = 'csi.spire.io/jwt-audiences';

describe('csi.spire.io/jwt-audiences', () => {
  test('absent: no JWT files, and no jwt key in the attributes at all', () => {
    assert.equal('jwt' in parseVolumeAttributes({}), false);
  });

  test('one audience: one token in jwt_svid.token, and the JWT bundle in bundle.json (spiffe-helper README names)', () => {
    assert.equal(DEFAULT_JWT_SVID_FILE, 'jwt_svid.token');
    assert.equal(DEFAULT_JWT_BUNDLE_FILE, 'bundle.json');
    assert.deepEqual(jwtOf({ [AUDIENCES]: 'vault' }), { svids: [{ file: 'jwt_svid.token', audiences: ['vault'] }], bundleFile: 'bundle.json' });
  });

  test('"a,b" is ONE token whose aud holds both, as spiffe-helper jwt_audience + jwt_extra_audiences', () => {
    assert.deepEqual(jwtOf({ [AUDIENCES]: 'https://vault.example.com, sts.amazonaws.com' })?.svids, [
      { file: 'jwt_svid.token', audiences: ['https://vault.example.com', 'sts.amazonaws.com'] },
    ]);
  });

  test('";" separates tokens; each may name its file with <file>=, one may keep the default name', () => {
    assert.deepEqual(
      jwtOf({ [AUDIENCES]: 'vault; aws.token=sts.amazonaws.com,api://AzureADTokenExchange', 'csi.spire.io/jwt-bundle-file': 'jwks.json' }),
      {
        svids: [
          { file: 'jwt_svid.token', audiences: ['vault'] },
          { file: 'aws.token', audiences: ['sts.amazonaws.com', 'api://AzureADTokenExchange'] },
        ],
        bundleFile: 'jwks.json',
      },
    );
  });

  test('empty audiences are rejected, saying how to write the list', () => {
    rejected({ [AUDIENCES]: '' }, /"csi\.spire\.io\/jwt-audiences"=""/, /empty audience/);
    rejected({ [AUDIENCES]: 'a,,b' }, /empty audience/);
    rejected({ [AUDIENCES]: 'a;' }, /entry 2/, /empty audience/);
    rejected({ [AUDIENCES]: 'x.token=' }, /empty audience/);
  });

  test('duplicates are rejected: an audience twice in a token, or two tokens for the same audiences', () => {
    rejected({ [AUDIENCES]: 'a,b,a' }, /lists audience "a" twice/);
    rejected({ [AUDIENCES]: 'a,b;x.token=b,a' }, /same audiences/, /list it once/);
  });

  test('audiences with spaces, separators or non-ASCII are rejected', () => {
    rejected({ [AUDIENCES]: 'my audience' }, /printable ASCII without spaces/);
    rejected({ [AUDIENCES]: 'café' }, /printable ASCII/);
    rejected({ [AUDIENCES]: 'a\tb' }, /printable ASCII/);
    rejected({ [AUDIENCES]: `${'a'.repeat(257)}` }, /longer than 256/);
  });

  test('file names follow the volume rules and every file name is distinct', () => {
    rejected({ [AUDIENCES]: '../x=vault' }, /contains "\/"/);
    rejected({ [AUDIENCES]: '.hidden=vault' }, /starts with "\."/);
    rejected({ [AUDIENCES]: 'svid.pem=vault' }, /every file of a volume needs its own name/, /cert-file/, /jwt-audiences/);
    rejected({ [AUDIENCES]: 'a;b' }, /only one token may use the default file name jwt_svid\.token/, /<file>=<audience>/);
    rejected({ [AUDIENCES]: 'x.token=a;x.token=b' }, /are both "x\.token"/);
    rejected({ [AUDIENCES]: 'a', 'csi.spire.io/jwt-bundle-file': 'jwt_svid.token' }, /jwt-bundle-file/, /are both "jwt_svid\.token"/);
  });

  test(`at most ${MAX_JWT_SVIDS} tokens and ${MAX_AUDIENCES_PER_JWT_SVID} audiences per token`, () => {
    const tokens = Array.from({ length: MAX_JWT_SVIDS }, (_, i) => `t${i}.token=aud${i}`);
    assert.equal(jwtOf({ [AUDIENCES]: tokens.join(';') })?.svids.length, MAX_JWT_SVIDS);
    rejected({ [AUDIENCES]: [...tokens, 'one-more'].join(';') }, /asks for 9 tokens; at most 8/);
    const audiences = Array.from({ length: MAX_AUDIENCES_PER_JWT_SVID }, (_, i) => `aud${i}`);
    assert.deepEqual(jwtOf({ [AUDIENCES]: audiences.join(',') })?.svids[0]?.audiences, audiences);
    rejected({ [AUDIENCES]: [...audiences, 'x'].join(',') }, /has 9 audiences; at most 8 per token/);
  });

  test('jwt-bundle-file alone is rejected: it names a file that would never be written', () => {
    rejected({ 'csi.spire.io/jwt-bundle-file': 'jwks.json' }, /jwt-bundle-file is set but csi\.spire\.io\/jwt-audiences is not/);
  });
});
