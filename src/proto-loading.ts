import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** Repository root, found relative to this file (works from src/ and dist/src/). */
export const PACKAGE_ROOT = findPackageRoot();

function findPackageRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // src/proto-loading.ts -> <root>/src ; dist/src/proto-loading.js -> <root>/dist/src
  return path.basename(path.dirname(here)) === 'dist' ? path.resolve(here, '..', '..') : path.resolve(here, '..');
}

/**
 * One set of decoding options for every proto we load, so the TypeScript
 * message types in csi/messages.ts and spire/messages.ts can rely on them:
 * snake_case field names as on the wire, enums as their string names, int64 as
 * JS numbers (SVID expiry seconds fit easily), unset fields filled with their
 * proto3 defaults, and oneofs reported through a virtual field naming the
 * member that is set.
 */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: true,
};

export function loadProtoPackage(includeDir: string, file: string): grpc.GrpcObject {
  const definition = protoLoader.loadSync(file, {
    ...PROTO_LOADER_OPTIONS,
    includeDirs: [path.join(PACKAGE_ROOT, includeDir)],
  });
  return grpc.loadPackageDefinition(definition);
}

/** Walks a dotted name ("csi.v1.Node") through a loaded package object. */
export function lookupService(root: grpc.GrpcObject, dottedName: string): grpc.ServiceClientConstructor {
  let node: unknown = root;
  for (const part of dottedName.split('.')) {
    node = (node as Record<string, unknown> | undefined)?.[part];
  }
  if (typeof node !== 'function' || !('service' in node)) {
    throw new Error(`proto service ${dottedName} not found; is the .proto file complete?`);
  }
  return node as grpc.ServiceClientConstructor;
}
