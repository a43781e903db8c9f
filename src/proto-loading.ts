import { fileURLToPath } from 'node:url';
import path from 'node:path';
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

/** Each .proto parsed once: csi.proto holds both CSI services. */
const loadedFiles = new Map<string, protoLoader.PackageDefinition>();

/**
 * The methods of service `dottedName` ("csi.v1.Node") in `file`: each one's
 * HTTP/2 path and its request and response codecs, as the driver's own gRPC
 * server (csi/h2-grpc-server.ts) and client (spire/h2-grpc-client.ts) use them.
 */
export function loadServiceDefinition(includeDir: string, file: string, dottedName: string): protoLoader.ServiceDefinition {
  const key = `${includeDir}/${file}`;
  let definition = loadedFiles.get(key);
  if (definition === undefined) {
    definition = protoLoader.loadSync(file, { ...PROTO_LOADER_OPTIONS, includeDirs: [path.join(PACKAGE_ROOT, includeDir)] });
    loadedFiles.set(key, definition);
  }
  const service = definition[dottedName];
  if (service === undefined || 'format' in service || Object.values(service).some((method) => !('path' in method))) {
    throw new Error(`proto service ${dottedName} not found in ${file}; is the .proto file complete?`);
  }
  return service;
}
