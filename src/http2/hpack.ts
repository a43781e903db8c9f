/**
 * HPACK (https://www.rfc-editor.org/rfc/rfc7541), as much as a client of one
 * gRPC server needs: a full decoder (static and dynamic table, Huffman
 * strings, table size updates), and an encoder that only ever writes literals
 * without indexing, so the server's decoder never has to keep a table for us.
 *
 * Everything the decoder refuses is an HpackError: the connection cannot go
 * on after one (its dynamic table is no longer in step with the server's),
 * so the caller ends it with COMPRESSION_ERROR.
 */
import { decodeHuffman, HuffmanError } from './hpack-huffman.js';

export class HpackError extends Error {}

/** One header field, as decoded: lower-case name (as HTTP/2 requires) and latin1 value. */
export type HeaderField = [name: string, value: string];

/** Appendix A: the static table, index 1-61. */
const STATIC_TABLE: readonly HeaderField[] = [
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];

/** Section 4.1: an entry's size is its name and value in octets plus 32. */
const ENTRY_OVERHEAD = 32;

export interface HpackDecoderOptions {
  /**
   * The SETTINGS_HEADER_TABLE_SIZE this side announced: the most the peer may
   * set the dynamic table to. 4096 is HTTP/2's default.
   */
  maxTableSize: number;
  /**
   * The SETTINGS_MAX_HEADER_LIST_SIZE this side announced: a block whose
   * fields add up to more (section 4.1 sizes) is refused, however it was
   * compressed.
   */
  maxHeaderListSize: number;
}

export class HpackDecoder {
  /** Newest entry first, as the indexes count (index 62 is entries[0]). */
  private entries: HeaderField[] = [];
  private tableSize = 0;
  private tableSizeLimit: number;

  constructor(private readonly options: HpackDecoderOptions) {
    this.tableSizeLimit = options.maxTableSize;
  }

  /** Decodes one complete header block (HEADERS plus its CONTINUATIONs). */
  decode(block: Uint8Array): HeaderField[] {
    const fields: HeaderField[] = [];
    let listSize = 0;
    let position = 0;
    let fieldSeen = false;
    const readInteger = (prefixBits: number): number => {
      const mask = (1 << prefixBits) - 1;
      let value = (block[position] as number) & mask;
      position += 1;
      if (value < mask) return value;
      let shift = 0;
      for (;;) {
        if (position >= block.length) throw new HpackError('a header block ends inside an integer');
        const byte = block[position] as number;
        position += 1;
        // Past 4 continuation bytes the value cannot fit 32 bits, whatever they hold (zeros included).
        if (shift > 28) throw new HpackError('a header block holds an integer over 2^32');
        value += (byte & 0x7f) * 2 ** shift;
        shift += 7;
        if (value > 0xffffffff) throw new HpackError('a header block holds an integer over 2^32');
        if ((byte & 0x80) === 0) return value;
      }
    };
    const readString = (): string => {
      if (position >= block.length) throw new HpackError('a header block ends before a string');
      const huffman = ((block[position] as number) & 0x80) !== 0;
      const length = readInteger(7);
      if (length > block.length - position) throw new HpackError('a header block ends inside a string');
      const bytes = block.subarray(position, position + length);
      position += length;
      if (!huffman) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
      try {
        return decodeHuffman(bytes);
      } catch (err) {
        if (err instanceof HuffmanError) throw new HpackError(err.message);
        throw err;
      }
    };
    const emit = (field: HeaderField): void => {
      listSize += field[0].length + field[1].length + ENTRY_OVERHEAD;
      if (listSize > this.options.maxHeaderListSize) {
        throw new HpackError(`a header block over the ${this.options.maxHeaderListSize}-byte header list limit`);
      }
      fields.push(field);
      fieldSeen = true;
    };
    while (position < block.length) {
      const first = block[position] as number;
      if (first & 0x80) {
        // Indexed header field (6.1).
        emit(this.entry(readInteger(7)));
      } else if (first & 0x40) {
        // Literal with incremental indexing (6.2.1).
        const index = readInteger(6);
        const name = index === 0 ? readString() : this.entry(index)[0];
        const field: HeaderField = [name, readString()];
        emit(field);
        this.add(field);
      } else if (first & 0x20) {
        // Dynamic table size update (6.3): only at the start of a block (4.2).
        if (fieldSeen) throw new HpackError('a dynamic table size update after a header field');
        const size = readInteger(5);
        if (size > this.options.maxTableSize) {
          throw new HpackError(`a dynamic table size update to ${size}, over the ${this.options.maxTableSize} allowed`);
        }
        this.tableSizeLimit = size;
        this.evict(0);
      } else {
        // Literal without indexing (6.2.2) or never indexed (6.2.3): 4-bit prefix either way.
        const index = readInteger(4);
        const name = index === 0 ? readString() : this.entry(index)[0];
        emit([name, readString()]);
      }
    }
    return fields;
  }

  private entry(index: number): HeaderField {
    if (index === 0) throw new HpackError('a header field refers to index 0');
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1] as HeaderField;
    const entry = this.entries[index - STATIC_TABLE.length - 1];
    if (entry === undefined) throw new HpackError(`a header field refers to index ${index}, past the end of the table`);
    return entry;
  }

  private add(field: HeaderField): void {
    const size = field[0].length + field[1].length + ENTRY_OVERHEAD;
    // An entry larger than the table empties it and is not added (4.4).
    this.evict(size);
    if (size <= this.tableSizeLimit) {
      this.entries.unshift(field);
      this.tableSize += size;
    }
  }

  /** Drops the oldest entries until `room` more octets fit. */
  private evict(room: number): void {
    while (this.entries.length > 0 && this.tableSize + room > this.tableSizeLimit) {
      const oldest = this.entries.pop() as HeaderField;
      this.tableSize -= oldest[0].length + oldest[1].length + ENTRY_OVERHEAD;
    }
  }
}

/** Static table indexes the encoder uses: `:method: POST` and `:scheme: http`. */
const INDEXED_METHOD_POST = 3;
const INDEXED_SCHEME_HTTP = 6;

function appendInteger(out: number[], value: number, prefixBits: number, firstByteFlags: number): void {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) {
    out.push(firstByteFlags | value);
    return;
  }
  out.push(firstByteFlags | mask);
  let rest = value - mask;
  while (rest >= 0x80) {
    out.push((rest % 0x80) | 0x80);
    rest = Math.floor(rest / 0x80);
  }
  out.push(rest);
}

function appendString(out: number[], text: string): void {
  const bytes = Buffer.from(text, 'latin1');
  appendInteger(out, bytes.length, 7, 0);
  for (const byte of bytes) out.push(byte);
}

/**
 * A request's header block: `:method: POST` and `:scheme: http` from the
 * static table, then `fields` as encodeHeaderBlock writes them.
 */
export function encodeRequestHeaders(fields: readonly HeaderField[]): Buffer {
  const out: number[] = [];
  appendInteger(out, INDEXED_METHOD_POST, 7, 0x80);
  appendInteger(out, INDEXED_SCHEME_HTTP, 7, 0x80);
  appendLiterals(out, fields);
  return Buffer.from(out);
}

/** A header block of `fields`, each a literal without indexing (6.2.2) with a literal name, no Huffman. Names must be lower case. */
export function encodeHeaderBlock(fields: readonly HeaderField[]): Buffer {
  const out: number[] = [];
  appendLiterals(out, fields);
  return Buffer.from(out);
}

function appendLiterals(out: number[], fields: readonly HeaderField[]): void {
  for (const [name, value] of fields) {
    out.push(0);
    appendString(out, name);
    appendString(out, value);
  }
}
