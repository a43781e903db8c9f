/**
 * HPACK's Huffman code for string literals, decoding only
 * (https://www.rfc-editor.org/rfc/rfc7541#appendix-B). The driver never
 * Huffman-encodes what it sends (src/http2/hpack.ts); the agent's grpc-go
 * encoder does whenever that is shorter, so every header the agent sends may
 * arrive this way.
 *
 * The code is canonical: within one length, codes grow with the symbol, and
 * each length's first code follows the last code of the shorter lengths. So
 * the table below holds only each symbol's code length (Appendix B's "len"
 * column, symbols 0-255 and then EOS), and the codes are rebuilt from it. A
 * unit test checks the rebuilt codes against Appendix B's examples and a peer
 * encoder.
 */
// prettier-ignore
const CODE_LENGTHS: readonly number[] = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0-15
  28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16-31
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // ' ' to '/'
  5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // '0' to '?'
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // '@' to 'O'
  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 'P' to '_'
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // '`' to 'o'
  6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 'p' to 127
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128-143
  24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144-159
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160-175
  21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176-191
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192-207
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208-223
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224-239
  26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240-255
  30, // EOS
];

const EOS = 256;
const MAX_LENGTH = 30;

/**
 * The canonical decoding tables: for each length, its first code, how many
 * symbols have it, and where they start in `SYMBOLS_BY_CODE`.
 */
interface CanonicalTables {
  firstCode: Uint32Array;
  count: Uint16Array;
  offset: Uint16Array;
  symbols: Uint16Array;
}

function buildTables(): CanonicalTables {
  const count = new Uint16Array(MAX_LENGTH + 1);
  for (const length of CODE_LENGTHS) count[length] = (count[length] as number) + 1;
  const firstCode = new Uint32Array(MAX_LENGTH + 1);
  const offset = new Uint16Array(MAX_LENGTH + 1);
  let code = 0;
  let position = 0;
  for (let length = 1; length <= MAX_LENGTH; length += 1) {
    code = (code + (count[length - 1] as number)) * 2;
    firstCode[length] = code;
    offset[length] = position;
    position += count[length] as number;
  }
  const symbols = new Uint16Array(CODE_LENGTHS.length);
  const next = Uint16Array.from(offset);
  CODE_LENGTHS.forEach((length, symbol) => {
    symbols[next[length] as number] = symbol;
    next[length] = (next[length] as number) + 1;
  });
  return { firstCode, count, offset, symbols };
}

const TABLES = buildTables();

/** Each symbol's code (for tests): [code, length], symbols 0-256. */
export function huffmanCodes(): [number, number][] {
  const codes: [number, number][] = [];
  const next = Uint32Array.from(TABLES.firstCode);
  CODE_LENGTHS.forEach((length) => {
    codes.push([next[length] as number, length]);
    next[length] = (next[length] as number) + 1;
  });
  return codes;
}

/** Why a Huffman string was refused (RFC 7541 section 5.2); the caller treats it as a COMPRESSION_ERROR. */
export class HuffmanError extends Error {}

/**
 * Decodes `bytes` into a latin1 string (one character per octet, as Node.js
 * gives header values). Refuses the EOS symbol, and padding that is longer
 * than 7 bits or not the most significant bits of EOS (all ones).
 */
export function decodeHuffman(bytes: Uint8Array): string {
  const { firstCode, count, offset, symbols } = TABLES;
  let out = '';
  let code = 0;
  let length = 0;
  for (const byte of bytes) {
    for (let bit = 7; bit >= 0; bit -= 1) {
      code = (code << 1) | ((byte >> bit) & 1);
      length += 1;
      const index = code - (firstCode[length] as number);
      if (index >= 0 && index < (count[length] as number)) {
        const symbol = symbols[(offset[length] as number) + index] as number;
        if (symbol === EOS) throw new HuffmanError('a Huffman-coded string holds the EOS symbol');
        out += String.fromCharCode(symbol);
        code = 0;
        length = 0;
      } else if (length >= MAX_LENGTH) {
        throw new HuffmanError('a Huffman-coded string holds an invalid code');
      }
    }
  }
  if (length > 7) throw new HuffmanError('a Huffman-coded string ends with more than 7 bits of padding');
  if (code !== (1 << length) - 1) throw new HuffmanError('a Huffman-coded string ends with padding that is not all ones');
  return out;
}
