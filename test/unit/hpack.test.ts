/**
 * The driver's HPACK decoder and request encoder (src/http2/hpack.ts): RFC
 * 7541's own examples (Appendix C), the Huffman code rebuilt from its lengths,
 * what a peer's encoder (nghttp2, through node:http2) sends, and every way a
 * hostile header block must be refused.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { decodeHuffman, huffmanCodes } from '../../src/http2/hpack-huffman.js';
import { type HeaderField, HpackDecoder, HpackError, encodeRequestHeaders } from '../../src/http2/hpack.js';

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');
const decoder = (maxTableSize = 4096, maxHeaderListSize = 1 << 20): HpackDecoder => new HpackDecoder({ maxTableSize, maxHeaderListSize });

describe('HPACK Huffman code', () => {
  test('the canonical code rebuilt from the lengths is complete and has Appendix B codes', () => {
    const codes = huffmanCodes();
    assert.equal(codes.length, 257);
    // A complete prefix code: the lengths fill the code space exactly (Kraft equality).
    const kraft = codes.reduce((sum, [, length]) => sum + 2 ** (30 - length), 0);
    assert.equal(kraft, 2 ** 30);
    // Spot checks against Appendix B's table.
    const expected: [symbol: number, code: number, length: number][] = [
      [0, 0x1ff8, 13],
      [1, 0x7fffd8, 23],
      [9, 0xffffea, 24],
      [10, 0x3ffffffc, 30],
      [32, 0x14, 6],
      [48, 0x0, 5],
      [97, 0x3, 5],
      [122, 0x7b, 7],
      [255, 0x3ffffee, 26],
      [256, 0x3fffffff, 30],
    ];
    for (const [symbol, code, length] of expected) assert.deepEqual(codes[symbol], [code, length], `symbol ${symbol}`);
  });

  test('every symbol encoded with the rebuilt code decodes back, with all-ones padding', () => {
    const codes = huffmanCodes();
    const bits: number[] = [];
    const text: string[] = [];
    for (let symbol = 255; symbol >= 0; symbol -= 1) {
      const [code, length] = codes[symbol] as [number, number];
      for (let bit = length - 1; bit >= 0; bit -= 1) bits.push(Math.floor(code / 2 ** bit) % 2);
      text.push(String.fromCharCode(symbol));
    }
    while (bits.length % 8 !== 0) bits.push(1);
    const bytes = Buffer.alloc(bits.length / 8);
    bits.forEach((bit, i) => {
      if (bit) bytes[i >> 3] = (bytes[i >> 3] as number) | (0x80 >> (i & 7));
    });
    assert.equal(decodeHuffman(bytes), text.join(''));
  });

  test('refuses EOS, padding over 7 bits and padding that is not all ones', () => {
    assert.throws(() => decodeHuffman(hex('ff ff ff ff')), /EOS/);
    assert.throws(() => decodeHuffman(hex('1f ff')), /more than 7 bits of padding/); // 'a' (00011) then 11 ones
    assert.throws(() => decodeHuffman(hex('18')), /not all ones/); // 'a' then 000
    assert.equal(decodeHuffman(hex('1f')), 'a');
  });
});

describe('HPACK decoder', () => {
  test('Appendix C.3: requests without Huffman, sharing a dynamic table', () => {
    const d = decoder();
    assert.deepEqual(d.decode(hex('8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d')), [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
    ]);
    assert.deepEqual(d.decode(hex('8286 84be 5808 6e6f 2d63 6163 6865')), [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
      ['cache-control', 'no-cache'],
    ]);
    assert.deepEqual(d.decode(hex('8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65')), [
      [':method', 'GET'],
      [':scheme', 'https'],
      [':path', '/index.html'],
      [':authority', 'www.example.com'],
      ['custom-key', 'custom-value'],
    ]);
  });

  test('Appendix C.4: the same requests with Huffman', () => {
    const d = decoder();
    assert.deepEqual(d.decode(hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff'))[3], [':authority', 'www.example.com']);
    assert.deepEqual(d.decode(hex('8286 84be 5886 a8eb 1064 9cbf'))[4], ['cache-control', 'no-cache']);
    assert.deepEqual(d.decode(hex('8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'))[4], ['custom-key', 'custom-value']);
  });

  test('Appendix C.6: responses with Huffman in a 256-byte table, entries evicted as they go', () => {
    const d = decoder(256);
    const date = (second: number): HeaderField => ['date', `Mon, 21 Oct 2013 20:13:${second} GMT`];
    assert.deepEqual(
      d.decode(
        hex('4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3'),
      ),
      [[':status', '302'], ['cache-control', 'private'], date(21), ['location', 'https://www.example.com']],
    );
    assert.deepEqual(d.decode(hex('4883 640e ffc1 c0bf')), [
      [':status', '307'],
      ['cache-control', 'private'],
      date(21),
      ['location', 'https://www.example.com'],
    ]);
    assert.deepEqual(
      d.decode(
        hex(
          '88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07',
        ),
      ),
      [
        [':status', '200'],
        ['cache-control', 'private'],
        date(22),
        ['location', 'https://www.example.com'],
        ['content-encoding', 'gzip'],
        ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
      ],
    );
    // ':status: 302' was evicted by then: index 62+3 is past the end of the table.
    assert.throws(() => d.decode(hex('c1 c2 c3 c4')), HpackError);
  });

  test('never-indexed and without-indexing literals do not enter the table; a size update evicts', () => {
    const d = decoder();
    assert.deepEqual(d.decode(hex('10 01 61 01 62 00 01 63 01 64 40 01 65 01 66')), [
      ['a', 'b'],
      ['c', 'd'],
      ['e', 'f'],
    ]);
    assert.deepEqual(d.decode(hex('be')), [['e', 'f']]);
    assert.throws(() => d.decode(hex('bf')), /past the end/);
    assert.deepEqual(d.decode(hex('20 88')), [[':status', '200']]);
    assert.throws(() => d.decode(hex('be')), /past the end/, 'a size update to 0 empties the table');
  });

  test('refuses hostile blocks', () => {
    const cases: [string, string, RegExp][] = [
      ['index 0', '80', /index 0/],
      ['an index past the tables', 'ff 00', /past the end/],
      ['an integer that never ends', 'ff ff ff', /ends inside an integer/],
      ['an integer over 2^32', 'ff ff ff ff ff ff 0f', /over 2\^32/],
      ['an integer past 4 continuation bytes, even of zeros', '00 7f 80 80 80 80 80 00', /over 2\^32/],
      ['a string past the end', '00 05 61', /inside a string/],
      ['a block ending before a value', '00 01 61', /before a string/],
      ['a size update over the limit', '3f e2 1f', /over the 4096 allowed/],
      ['a size update after a field', '88 20', /after a header field/],
      ['a Huffman string holding EOS', '00 01 61 84 ff ff ff ff', /EOS/],
    ];
    for (const [name, block, message] of cases) {
      assert.throws(
        () => decoder().decode(hex(block)),
        (err: unknown) => err instanceof HpackError && message.test(err.message),
        name,
      );
    }
  });

  test('refuses a header list over its limit, counted as RFC 7541 sizes', () => {
    const field = Buffer.concat([hex('00 01 61 7f 00'), Buffer.alloc(127, 0x62)]); // a: 127 × 'b' = 160 bytes
    assert.equal(decoder(4096, 320).decode(Buffer.concat([field, field])).length, 2);
    assert.throws(() => decoder(4096, 319).decode(Buffer.concat([field, field])), /header list limit/);
    // Indexed references count too: a small block may not expand into a large list.
    const indexed = Buffer.concat([hex('40 01 61 7f 00'), Buffer.alloc(127, 0x62), Buffer.alloc(100, 0xbe)]);
    assert.throws(() => decoder(4096, 4096).decode(indexed), /header list limit/);
  });
});

describe('HPACK request encoder', () => {
  test('literals without indexing, long names and values included, decode back', () => {
    const fields: HeaderField[] = [
      [':path', '/spire.api.agent.delegatedidentity.v1.DelegatedIdentity/SubscribeToX509SVIDs'],
      ['content-type', 'application/grpc'],
      ['x-long', 'v'.repeat(300)],
      ['n'.repeat(200), ''],
    ];
    const block = encodeRequestHeaders(fields);
    const d = decoder();
    assert.deepEqual(d.decode(block), [[':method', 'POST'], [':scheme', 'http'], ...fields]);
    // Nothing entered the table.
    assert.throws(() => d.decode(hex('be')), /past the end/);
  });
});
