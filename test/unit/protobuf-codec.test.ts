/**
 * The driver's protobuf codec (src/protobuf/codec.ts) and its schemas against
 * protobufjs through @grpc/proto-loader on our .proto files: for random
 * messages of every type the driver decodes, both decoders give the same
 * object from proto-loader's bytes; for every type it encodes, proto-loader
 * reads back what it would have encoded itself. A schema whose field number,
 * type or name differs from the .proto fails here. Random bytes either decode
 * or throw an Error; nothing else.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type * as protoLoader from '@grpc/proto-loader';
import fc from 'fast-check';
import { CSI_IDENTITY_METHODS, CSI_NODE_METHODS, CSI_SCHEMAS } from '../../src/csi/messages.js';
import { MAX_ELEMENTS, decodeMessage, encodeMessage, type FieldSchema, type MessageSchema } from '../../src/protobuf/codec.js';
import { DELEGATED_IDENTITY_METHODS } from '../../src/spire/messages.js';
import { csiIdentityServiceDefinition, csiNodeServiceDefinition, delegatedIdentityServiceDefinition } from '../support/grpc-services.js';

const RUNS = Number(process.env['FUZZ_RUNS'] ?? 200);

function encodeLength(n: number): Buffer {
  const bytes: number[] = [];
  for (let rest = n; ; rest = Math.floor(rest / 128)) {
    if (rest < 128) return Buffer.from([...bytes, rest]);
    bytes.push((rest % 128) | 0x80);
  }
}

function arbitraryField(field: FieldSchema): fc.Arbitrary<unknown> {
  switch (field.type) {
    case 'string':
      return fc.string({ unit: 'grapheme', maxLength: 20 });
    case 'bytes':
      return fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes));
    case 'bool':
      return fc.boolean();
    case 'int64':
      return fc.oneof(
        fc.integer({ min: -1000, max: 1000 }),
        fc.maxSafeInteger(),
        fc.maxSafeInteger().map((n) => -n),
      );
    case 'int32':
      return fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 });
    case 'enum':
      return fc.constantFrom(...(field.values ?? ['UNKNOWN']));
    case 'message':
      return arbitraryMessage(field.message as MessageSchema);
    case 'map':
      return field.mapValue === 'bytes'
        ? fc.dictionary(
            fc.string({ unit: 'grapheme', maxLength: 10 }),
            fc.uint8Array({ maxLength: 20 }).map((bytes) => Buffer.from(bytes)),
            { maxKeys: 4, noNullPrototype: true },
          )
        : fc.dictionary(fc.string({ unit: 'grapheme', maxLength: 10 }), fc.string({ unit: 'grapheme', maxLength: 10 }), {
            maxKeys: 4,
            noNullPrototype: true,
          });
  }
}

function arbitraryMessage(schema: MessageSchema): fc.Arbitrary<Record<string, unknown>> {
  const plain = schema.fields.filter((f) => f.oneof === undefined);
  const oneofMembers = schema.fields.filter((f) => f.oneof !== undefined);
  const record = fc.record(
    Object.fromEntries(plain.map((f) => [f.name, f.repeated ? fc.array(arbitraryField(f), { maxLength: 3 }) : arbitraryField(f)])),
    { requiredKeys: [] },
  );
  const member = oneofMembers.length === 0 ? fc.constant(undefined) : fc.option(fc.constantFrom(...oneofMembers), { nil: undefined });
  return fc
    .tuple(record, member)
    .chain(([base, chosen]) =>
      chosen === undefined
        ? fc.constant(base as Record<string, unknown>)
        : arbitraryField(chosen).map((value) => ({ ...base, [chosen.name]: value })),
    );
}

/** proto-loader's codec of one method's request or response. */
function theirs(definition: protoLoader.ServiceDefinition, method: string, side: 'request' | 'response') {
  const m = definition[method];
  assert.ok(m, `the .proto has ${method}`);
  return side === 'request'
    ? { encode: (v: object) => m.requestSerialize(v), decode: (b: Buffer) => m.requestDeserialize(b) as unknown }
    : { encode: (v: object) => m.responseSerialize(v), decode: (b: Buffer) => m.responseDeserialize(b) as unknown };
}

const CSI_DECODED = [
  ['NodePublishVolume', 'NodePublishVolumeRequest'],
  ['NodeUnpublishVolume', 'NodeUnpublishVolumeRequest'],
  ['NodeGetVolumeStats', 'NodeGetVolumeStatsRequest'],
] as const;

const CSI_ENCODED = [
  [csiIdentityServiceDefinition, CSI_IDENTITY_METHODS, 'GetPluginInfo', 'GetPluginInfoResponse'],
  [csiIdentityServiceDefinition, CSI_IDENTITY_METHODS, 'GetPluginCapabilities', 'GetPluginCapabilitiesResponse'],
  [csiIdentityServiceDefinition, CSI_IDENTITY_METHODS, 'Probe', 'ProbeResponse'],
  [csiNodeServiceDefinition, CSI_NODE_METHODS, 'NodeGetInfo', 'NodeGetInfoResponse'],
  [csiNodeServiceDefinition, CSI_NODE_METHODS, 'NodeGetCapabilities', 'NodeGetCapabilitiesResponse'],
  [csiNodeServiceDefinition, CSI_NODE_METHODS, 'NodeGetVolumeStats', 'NodeGetVolumeStatsResponse'],
] as const;

describe('protobuf codec: CSI, against proto-loader on csi-proto/', () => {
  for (const [method, schemaName] of CSI_DECODED) {
    test(`${schemaName}: the same object from proto-loader's bytes`, () => {
      const them = theirs(csiNodeServiceDefinition(), method, 'request');
      const ours = CSI_NODE_METHODS[method];
      assert.ok(ours);
      fc.assert(
        fc.property(arbitraryMessage(CSI_SCHEMAS[schemaName] as MessageSchema), (value) => {
          const bytes = them.encode(value);
          assert.deepEqual(ours.decodeRequest(bytes), them.decode(bytes));
        }),
        { numRuns: RUNS },
      );
    });
  }
  for (const [definition, methods, method, schemaName] of CSI_ENCODED) {
    test(`${schemaName}: proto-loader reads our bytes as its own`, () => {
      const them = theirs(definition(), method, 'response');
      const ours = methods[method];
      assert.ok(ours);
      fc.assert(
        fc.property(arbitraryMessage(CSI_SCHEMAS[schemaName] as MessageSchema), (value) => {
          assert.deepEqual(them.decode(ours.encodeResponse(value)), them.decode(them.encode(value)));
        }),
        { numRuns: RUNS },
      );
    });
  }
});

describe('protobuf codec: the Delegated Identity API, against proto-loader on spire-proto/', () => {
  for (const [key, method] of Object.entries(DELEGATED_IDENTITY_METHODS)) {
    test(`${method.name}: responses decode as proto-loader decodes them; requests encode as it reads them`, () => {
      const response = theirs(delegatedIdentityServiceDefinition(), method.name, 'response');
      const request = theirs(delegatedIdentityServiceDefinition(), method.name, 'request');
      fc.assert(
        fc.property(arbitraryMessage(method.response), arbitraryMessage(method.request), (responseValue, requestValue) => {
          const bytes = response.encode(responseValue);
          assert.deepEqual(decodeMessage(method.response, bytes), response.decode(bytes), `${key} response`);
          assert.deepEqual(
            request.decode(encodeMessage(method.request, requestValue)),
            request.decode(request.encode(requestValue)),
            `${key} request`,
          );
        }),
        { numRuns: RUNS },
      );
    });
  }
});

describe('protobuf codec: hostile bytes', () => {
  test('random bytes decode or throw an Error, for every message the driver decodes', () => {
    const schemas = [
      ...CSI_DECODED.map(([, name]) => CSI_SCHEMAS[name] as MessageSchema),
      ...Object.values(DELEGATED_IDENTITY_METHODS).map((m) => m.response),
    ];
    fc.assert(
      fc.property(fc.constantFrom(...schemas), fc.uint8Array({ maxLength: 2000 }), (schema, bytes) => {
        try {
          decodeMessage(schema, Buffer.from(bytes));
        } catch (err) {
          assert.ok(err instanceof Error, String(err));
          assert.match(err.message, new RegExp(`^a ${schema.name} message: `));
        }
      }),
      { numRuns: RUNS * 10 },
    );
  });

  test(`at most ${MAX_ELEMENTS} entries in one map or repeated field; int32 and string fields take only what fits`, () => {
    const publish = CSI_SCHEMAS['NodePublishVolumeRequest'] as MessageSchema;
    const entry = Buffer.from([0x42, 0x04, 0x0a, 0x00, 0x12, 0x00]); // volume_context {'': ''}
    assert.doesNotThrow(() => decodeMessage(publish, Buffer.concat(Array<Buffer>(MAX_ELEMENTS).fill(entry))));
    assert.throws(
      () => decodeMessage(publish, Buffer.concat(Array<Buffer>(MAX_ELEMENTS + 1).fill(entry))),
      /more than 10000 entries in volume_context/,
    );
    const flags = Buffer.from([0x12, 0x00]); // mount_flags ''
    const mount = Buffer.concat(Array<Buffer>(MAX_ELEMENTS + 1).fill(flags));
    const mountMessage = Buffer.concat([Buffer.from([0x12]), encodeLength(mount.length), mount]);
    const capability = Buffer.concat([Buffer.from([0x2a]), encodeLength(mountMessage.length), mountMessage]);
    assert.throws(() => decodeMessage(publish, capability), /more than 10000 entries in mount_flags/);
    const request = DELEGATED_IDENTITY_METHODS.subscribeToX509Svids.request;
    assert.throws(() => encodeMessage(request, { selectors: [], pid: 2 ** 33 }), /does not fit in 32 bits/);
    assert.throws(() => encodeMessage(publish, { volume_id: Buffer.from([0xff]) }), /volume_id must be a string/);
  });

  test('what it refuses: a length past the end, an 11-byte varint, a known field with the wrong wire type, a group', () => {
    const schema = CSI_SCHEMAS['NodeUnpublishVolumeRequest'] as MessageSchema;
    const cases: Array<[string, number[], RegExp]> = [
      ['length past the end', [0x0a, 0x05, 0x61], /runs past the end/],
      ['11-byte varint (in an unknown field)', [0x18, ...Array<number>(10).fill(0xff), 0x01], /over 64 bits/],
      ['wrong wire type', [0x08, 0x01], /volume_id has wire type 0/],
      ['a group', [0x1b], /unsupported wire type 3/],
      ['field number 0', [0x02, 0x00], /field number 0/],
      // What Go refuses and a 32-bit reading would have let through:
      ['a length of 2^32 + 1 before one byte', [0x0a, 0x81, 0x80, 0x80, 0x80, 0x10, 0x41], /runs past the end/],
      ['a field number over 2^29 - 1 (2^32 + 34 read as 32 bits is target_path)', [0xa2, 0x80, 0x80, 0x80, 0x10, 0x01, 0x41], /field number/],
      ['a 10th varint byte above 1', [0x18, ...Array<number>(9).fill(0xff), 0x02], /over 64 bits/],
    ];
    for (const [name, bytes, message] of cases) assert.throws(() => decodeMessage(schema, Buffer.from(bytes)), message, name);
    // Two members of one oneof on the wire: the last one wins, the other is gone
    // (https://protobuf.dev/programming-guides/proto3/#oneof); protobufjs keeps both.
    const publish = CSI_SCHEMAS['NodePublishVolumeRequest'] as MessageSchema;
    const capability = Buffer.from([0x0a, 0x00, 0x12, 0x02, 0x0a, 0x00]); // block {}, then mount { fs_type: '' }
    const decoded = decodeMessage<Record<string, unknown>>(publish, Buffer.concat([Buffer.from([0x2a, capability.length]), capability]));
    // A map key "__proto__" is an own key like any other, never the object's prototype.
    const request = CSI_NODE_METHODS['NodePublishVolume']?.decodeRequest(
      encodeMessage(publish, { volume_context: JSON.parse('{"__proto__": "x", "constructor": "y"}') as Record<string, string> }),
    ) as { volume_context: Record<string, string> };
    assert.deepEqual(Object.entries(request.volume_context), [
      ['__proto__', 'x'],
      ['constructor', 'y'],
    ]);
    assert.equal(Object.getPrototypeOf(request.volume_context), Object.prototype);
    assert.deepEqual(decoded['volume_capability'], {
      access_mode: null,
      access_type: 'mount',
      mount: { fs_type: '', mount_flags: [], volume_mount_group: '' },
    });
    assert.deepEqual(
      decodeMessage(schema, Buffer.from([0x18, 0x01, 0x0a, 0x01, 0x76])),
      { volume_id: 'v', target_path: '' },
      'an unknown field is skipped',
    );
  });
});
