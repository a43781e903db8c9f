/**
 * The services as grpc-js client constructors (each also carries `.service`
 * for a grpc-js server), for the tests' kubelet simulator, development agent
 * and stand-ins. grpc-js is a development dependency only: the driver speaks
 * gRPC itself (src/csi/h2-grpc-server.ts, src/spire/h2-grpc-client.ts), and
 * talking to it through grpc-js is what kubelet and the real agent do.
 */
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CSI_IDENTITY_SERVICE_NAME, CSI_NODE_SERVICE_NAME } from '../../src/csi/messages.js';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { DELEGATED_IDENTITY_SERVICE_NAME } from '../../src/spire/messages.js';

/**
 * The decoding options the driver's message shapes follow (src/protobuf/codec.ts):
 * snake_case field names as on the wire, enums as their names, int64 as
 * numbers, unset fields with their proto3 defaults, and a oneof's set member
 * named by a virtual field.
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

const loadedFiles = new Map<string, protoLoader.PackageDefinition>();

/** `file` under `includeDir` of the repository, parsed once. */
function packageDefinition(includeDir: string, file: string): protoLoader.PackageDefinition {
  const key = `${includeDir}/${file}`;
  let definition = loadedFiles.get(key);
  if (definition === undefined) {
    definition = protoLoader.loadSync(file, { ...PROTO_LOADER_OPTIONS, includeDirs: [path.join(PACKAGE_ROOT, includeDir)] });
    loadedFiles.set(key, definition);
  }
  return definition;
}

/** The methods of service `dottedName` in `file` under `includeDir` of the repository, as proto-loader describes them. */
export function loadServiceDefinition(includeDir: string, file: string, dottedName: string): protoLoader.ServiceDefinition {
  const service = packageDefinition(includeDir, file)[dottedName];
  if (service === undefined || 'format' in service || Object.values(service).some((method) => !('path' in method))) {
    throw new Error(`proto service ${dottedName} not found in ${file}`);
  }
  return service;
}

export const csiIdentityServiceDefinition = (): protoLoader.ServiceDefinition =>
  loadServiceDefinition('csi-proto', 'csi/v1/csi.proto', CSI_IDENTITY_SERVICE_NAME);
export const csiNodeServiceDefinition = (): protoLoader.ServiceDefinition =>
  loadServiceDefinition('csi-proto', 'csi/v1/csi.proto', CSI_NODE_SERVICE_NAME);
export const delegatedIdentityServiceDefinition = (): protoLoader.ServiceDefinition =>
  loadServiceDefinition('spire-proto', 'spire/api/agent/delegatedidentity/v1/delegatedidentity.proto', DELEGATED_IDENTITY_SERVICE_NAME);

const constructors = new Map<string, grpc.ServiceClientConstructor>();

function constructorFor(name: string, definition: () => protoLoader.ServiceDefinition): grpc.ServiceClientConstructor {
  let constructor = constructors.get(name);
  if (constructor === undefined) {
    constructor = grpc.makeGenericClientConstructor(definition(), name);
    constructors.set(name, constructor);
  }
  return constructor;
}

export function csiIdentityService(): grpc.ServiceClientConstructor {
  return constructorFor(CSI_IDENTITY_SERVICE_NAME, csiIdentityServiceDefinition);
}

export function csiNodeService(): grpc.ServiceClientConstructor {
  return constructorFor(CSI_NODE_SERVICE_NAME, csiNodeServiceDefinition);
}

export function delegatedIdentityService(): grpc.ServiceClientConstructor {
  return constructorFor(DELEGATED_IDENTITY_SERVICE_NAME, delegatedIdentityServiceDefinition);
}

/** A whole .proto package for grpc-js, under `includeDir` of the repository. */
export function loadProtoPackage(includeDir: string, file: string): grpc.GrpcObject {
  return grpc.loadPackageDefinition(packageDefinition(includeDir, file));
}

/** Walks a dotted name ("pluginregistration.Registration") through a loaded package object. */
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
