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
import { CSI_IDENTITY_SERVICE_NAME, CSI_NODE_SERVICE_NAME, csiIdentityServiceDefinition, csiNodeServiceDefinition } from '../../src/csi/messages.js';
import { PACKAGE_ROOT, PROTO_LOADER_OPTIONS } from '../../src/proto-loading.js';
import { DELEGATED_IDENTITY_SERVICE_NAME, delegatedIdentityServiceDefinition } from '../../src/spire/messages.js';

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
  const definition = protoLoader.loadSync(file, { ...PROTO_LOADER_OPTIONS, includeDirs: [path.join(PACKAGE_ROOT, includeDir)] });
  return grpc.loadPackageDefinition(definition);
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
