/**
 * Protocol Buffers (proto3) wire format for the few messages the driver
 * exchanges with kubelet and the SPIRE agent, from small schemas
 * (csi/messages.ts, spire/messages.ts) that mirror our .proto files.
 * https://protobuf.dev/programming-guides/encoding/
 *
 * Why not protobufjs through @grpc/proto-loader: memory. They parsed the
 * .proto text at start and kept a reflection tree, generated codecs and the
 * encoded file descriptors of every type, ~2 MiB of JavaScript heap for a
 * couple of dozen messages (README "Benchmarks").
 *
 * Decoded messages have the shape proto-loader gave them with the options the
 * code was written for (keepCase, longs: Number, enums: String, defaults,
 * oneofs): field names as in the .proto; every field not in a oneof present
 * with its default ('' , 0, false, the enum's name for 0, an empty Buffer, [],
 * {}, null for a message); a oneof's set member, and a virtual field named
 * after the oneof that holds that member's name. test/unit/protobuf-codec.test.ts
 * checks this against proto-loader on the same .proto files.
 *
 * A decoder of untrusted bytes, as strict as Go's: a length beyond the bytes
 * left, a varint over 10 bytes (or whose 10th byte says more than 64 bits), a
 * field number 0 or over 2^29-1, a known field with the wrong wire type, a
 * group (deprecated, never used by these schemas), or over MAX_ELEMENTS entries
 * in one repeated field or map throws an Error. Unknown fields are skipped, as
 * the format requires; int32 and enum numbers keep their low 32 bits, as Go
 * does; invalid UTF-8 in a string becomes U+FFFD, as protobufjs gave it.
 */

export type ScalarType = 'string' | 'bytes' | 'bool' | 'int64' | 'int32';

export interface FieldSchema {
  name: string;
  no: number;
  type: ScalarType | 'enum' | 'message' | 'map';
  repeated?: boolean;
  /** enum: the value names by number (a missing number decodes to the number itself). */
  values?: readonly string[];
  /** message: its schema. */
  message?: MessageSchema;
  /** map: the value type; keys are strings. */
  mapValue?: 'string' | 'bytes';
  /** The oneof this field is a member of. */
  oneof?: string;
}

export interface MessageSchema {
  name: string;
  fields: readonly FieldSchema[];
}

/** Entries of one repeated field or map in a message: kubelet sends a handful, the agent one per matching entry. */
export const MAX_ELEMENTS = 10_000;
const MAX_FIELD_NUMBER = 2 ** 29 - 1;

const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const FIXED32 = 5;

function wireTypeOf(field: FieldSchema): number {
  switch (field.type) {
    case 'bool':
    case 'int64':
    case 'int32':
    case 'enum':
      return VARINT;
    case 'string':
    case 'bytes':
    case 'message':
    case 'map':
      return LENGTH_DELIMITED;
  }
}

// ---------------------------------------------------------------- decoding

class Reader {
  offset = 0;
  constructor(
    readonly bytes: Buffer,
    readonly what: string,
  ) {}

  get done(): boolean {
    return this.offset >= this.bytes.length;
  }

  fail(problem: string): never {
    throw new Error(`${this.what}: ${problem} at byte ${this.offset}`);
  }

  /** An unsigned varint of up to 64 bits, as a BigInt. */
  varint64(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      const byte = this.bytes[this.offset];
      if (byte === undefined) this.fail('truncated varint');
      this.offset++;
      // The 10th byte holds the 64th bit only.
      if (shift === 63n && byte > 1) this.fail('varint over 64 bits');
      result |= BigInt(byte & 0x7f) << shift;
      if (byte < 0x80) return result;
    }
    return this.fail('varint longer than 10 bytes'); // not reached: the 10th byte ends it or fails above
  }

  /** A field's tag: its number and wire type. */
  tag(): { no: number; wireType: number } {
    const tag = this.varint64();
    const no = Number(tag >> 3n);
    if (no === 0 || no > MAX_FIELD_NUMBER) this.fail(`field number ${no}`);
    return { no, wireType: Number(tag & 7n) };
  }

  /** A varint read as 32 bits (tags, lengths, int32, enums, bool). */
  varint32(): number {
    let result = 0;
    for (let i = 0; i < 10; i++) {
      const byte = this.bytes[this.offset];
      if (byte === undefined) this.fail('truncated varint');
      this.offset++;
      // Bits beyond the 32nd are dropped, as the format says for int32.
      if (i < 5) result += (byte & 0x7f) * 2 ** (7 * i);
      if (byte < 0x80) return result % 2 ** 32;
    }
    return this.fail('varint longer than 10 bytes');
  }

  lengthDelimited(): Buffer {
    const length = this.varint64();
    if (length > BigInt(this.bytes.length - this.offset)) this.fail(`a ${length}-byte field runs past the end`);
    const end = this.offset + Number(length);
    const slice = this.bytes.subarray(this.offset, end);
    this.offset = end;
    return slice;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case VARINT:
        this.varint64();
        return;
      case FIXED64:
        this.advance(8);
        return;
      case LENGTH_DELIMITED:
        this.lengthDelimited();
        return;
      case FIXED32:
        this.advance(4);
        return;
      default:
        this.fail(`unsupported wire type ${wireType}`);
    }
  }

  private advance(n: number): void {
    if (this.offset + n > this.bytes.length) this.fail('truncated fixed-size field');
    this.offset += n;
  }
}

function defaultOf(field: FieldSchema): unknown {
  if (field.repeated) return [];
  switch (field.type) {
    case 'string':
      return '';
    case 'bytes':
      return Buffer.alloc(0);
    case 'bool':
      return false;
    case 'int64':
    case 'int32':
      return 0;
    case 'enum':
      return field.values?.[0] ?? 0;
    case 'message':
      return null;
    case 'map':
      return {};
  }
}

/** Decodes `bytes` as `schema`; throws, naming the message, on malformed input. */
export function decodeMessage<T>(schema: MessageSchema, bytes: Buffer): T {
  return decodeWith(schema, new Reader(bytes, `a ${schema.name} message`)) as T;
}

function decodeWith(schema: MessageSchema, reader: Reader): Record<string, unknown> {
  const result: Record<string, unknown> = {};
  for (const field of schema.fields) if (field.oneof === undefined) result[field.name] = defaultOf(field);
  const counts = new Map<string, number>();
  while (!reader.done) {
    const { no, wireType } = reader.tag();
    const field = schema.fields.find((f) => f.no === no);
    if (field === undefined) {
      reader.skip(wireType);
      continue;
    }
    if (wireType !== wireTypeOf(field)) reader.fail(`field ${field.name} has wire type ${wireType}`);
    const value = readValue(field, reader);
    if (field.type === 'map' || field.repeated) {
      const count = (counts.get(field.name) ?? 0) + 1;
      if (count > MAX_ELEMENTS) reader.fail(`more than ${MAX_ELEMENTS} entries in ${field.name}`);
      counts.set(field.name, count);
    }
    if (field.type === 'map') {
      const [key, mapValue] = value as [string, unknown];
      // An own property whatever the key: an assignment to "__proto__" would set the object's prototype instead.
      Object.defineProperty(result[field.name], key, { value: mapValue, enumerable: true, writable: true, configurable: true });
    } else if (field.repeated) {
      // The first element makes an array of exactly one (the usual case: one
      // SVID, one certificate): a push onto the empty default would reserve
      // room for 17, and a decoded SVID is kept for the volume's life.
      const list = result[field.name] as unknown[];
      if (list.length === 0) result[field.name] = [value];
      else list.push(value);
    } else {
      result[field.name] = value;
      if (field.oneof !== undefined) {
        // The last member seen wins, and the others are cleared, as the format says.
        for (const other of schema.fields) if (other.oneof === field.oneof && other !== field) delete result[other.name];
        result[field.oneof] = field.name;
      }
    }
  }
  return result;
}

function readValue(field: FieldSchema, reader: Reader): unknown {
  switch (field.type) {
    case 'string':
      return reader.lengthDelimited().toString('utf8');
    case 'bytes':
      // A view, as protobufjs gave: the caller hands in the message's own
      // buffer (h2-grpc-client copies each message out of the socket's reads),
      // so the view pins only that message. A copy of each certificate would
      // come from Node's shared 8 KiB pool and pin a pool slab per volume.
      return reader.lengthDelimited();
    case 'bool':
      return reader.varint64() !== 0n;
    case 'int64':
      return Number(BigInt.asIntN(64, reader.varint64()));
    case 'int32':
      return reader.varint32() | 0;
    case 'enum': {
      const number = reader.varint32() | 0;
      return field.values?.[number] ?? number;
    }
    case 'message':
      return decodeWith(requireMessage(field), new Reader(reader.lengthDelimited(), reader.what));
    case 'map':
      return readMapEntry(field, new Reader(reader.lengthDelimited(), reader.what));
  }
}

function readMapEntry(field: FieldSchema, reader: Reader): [string, unknown] {
  let key = '';
  let value: unknown = field.mapValue === 'bytes' ? Buffer.alloc(0) : '';
  while (!reader.done) {
    const { no, wireType } = reader.tag();
    if ((no === 1 || no === 2) && wireType !== LENGTH_DELIMITED) reader.fail(`map ${field.name} entry field ${no} has wire type ${wireType}`);
    if (no === 1) key = reader.lengthDelimited().toString('utf8');
    else if (no === 2) value = field.mapValue === 'bytes' ? reader.lengthDelimited() : reader.lengthDelimited().toString('utf8');
    else reader.skip(wireType);
  }
  return [key, value];
}

function requireMessage(field: FieldSchema): MessageSchema {
  if (field.message === undefined) throw new Error(`internal error: field ${field.name} has no message schema`);
  return field.message;
}

// ---------------------------------------------------------------- encoding

class Writer {
  private buffer = Buffer.allocUnsafe(256);
  private length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buffer.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buffer.length * 2, this.length + n));
    this.buffer.copy(bigger, 0, 0, this.length);
    this.buffer = bigger;
  }

  varint(value: bigint | number): void {
    let rest = BigInt.asUintN(64, BigInt(value));
    this.reserve(10);
    while (rest >= 0x80n) {
      this.buffer[this.length++] = Number(rest & 0x7fn) | 0x80;
      rest >>= 7n;
    }
    this.buffer[this.length++] = Number(rest);
  }

  tag(no: number, wireType: number): void {
    this.varint(no * 8 + wireType);
  }

  bytes(data: Buffer): void {
    this.varint(data.length);
    this.reserve(data.length);
    data.copy(this.buffer, this.length);
    this.length += data.length;
  }

  finish(): Buffer {
    return Buffer.from(this.buffer.subarray(0, this.length));
  }
}

/**
 * Encodes `value` as `schema`: fields by name, unset (undefined or null) and
 * proto3 default scalars left out; enums by name or number. Throws on a value
 * that does not fit its field (the caller's bug).
 */
export function encodeMessage(schema: MessageSchema, value: object): Buffer {
  const writer = new Writer();
  writeMessage(schema, value as Record<string, unknown>, writer);
  return writer.finish();
}

function writeMessage(schema: MessageSchema, value: Record<string, unknown>, writer: Writer): void {
  for (const field of schema.fields) {
    const fieldValue = value[field.name];
    if (fieldValue === undefined || fieldValue === null) continue;
    if (field.type === 'map') {
      for (const [key, entryValue] of Object.entries(fieldValue as Record<string, unknown>)) {
        const entry = new Writer();
        entry.tag(1, LENGTH_DELIMITED);
        entry.bytes(Buffer.from(key, 'utf8'));
        entry.tag(2, LENGTH_DELIMITED);
        entry.bytes(toBytes(entryValue, field));
        writer.tag(field.no, LENGTH_DELIMITED);
        writer.bytes(entry.finish());
      }
    } else if (field.repeated) {
      if (!Array.isArray(fieldValue)) throw new Error(`${schema.name}.${field.name} must be an array`);
      for (const item of fieldValue) writeField(field, item, writer, true);
    } else {
      writeField(field, fieldValue, writer, field.oneof !== undefined);
    }
  }
}

function writeField(field: FieldSchema, value: unknown, writer: Writer, keepDefault: boolean): void {
  switch (field.type) {
    case 'string':
    case 'bytes': {
      const data = toBytes(value, field);
      if (data.length === 0 && !keepDefault) return;
      writer.tag(field.no, LENGTH_DELIMITED);
      writer.bytes(data);
      return;
    }
    case 'bool':
      if (typeof value !== 'boolean') throw new Error(`${field.name} must be a boolean`);
      if (!value && !keepDefault) return;
      writer.tag(field.no, VARINT);
      writer.varint(value ? 1 : 0);
      return;
    case 'int64':
    case 'int32': {
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw new Error(`${field.name} must be a whole number`);
      if (field.type === 'int32' && (value < -(2 ** 31) || value >= 2 ** 31)) throw new Error(`${field.name}: ${value} does not fit in 32 bits`);
      if (value === 0 && !keepDefault) return;
      writer.tag(field.no, VARINT);
      writer.varint(value);
      return;
    }
    case 'enum': {
      const number = typeof value === 'number' ? value : (field.values ?? []).indexOf(String(value));
      if (!Number.isInteger(number) || number < 0) throw new Error(`${field.name}: ${String(value)} is not a value of its enum`);
      if (number === 0 && !keepDefault) return;
      writer.tag(field.no, VARINT);
      writer.varint(number);
      return;
    }
    case 'message': {
      if (typeof value !== 'object' || value === null) throw new Error(`${field.name} must be an object`);
      const nested = new Writer();
      writeMessage(requireMessage(field), value as Record<string, unknown>, nested);
      writer.tag(field.no, LENGTH_DELIMITED);
      writer.bytes(nested.finish());
      return;
    }
    case 'map':
      throw new Error(`internal error: map ${field.name} written as a single field`);
  }
}

function toBytes(value: unknown, field: FieldSchema): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  // A string field takes a string only: bytes could carry invalid UTF-8, which Go refuses.
  if (field.type === 'string') throw new Error(`${field.name} must be a string`);
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new Error(`${field.name} must be a string or bytes`);
}
