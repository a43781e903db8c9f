/** The CSI gRPC server on its Unix socket, serving csi.v1.Identity and csi.v1.Node. */
import fs from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { csiIdentityService, csiNodeService } from './messages.js';

export interface CsiServer {
  close(): Promise<void>;
}

export async function startCsiServer(options: {
  socketPath: string;
  identity: grpc.UntypedServiceImplementation;
  node: grpc.UntypedServiceImplementation;
}): Promise<CsiServer> {
  const { socketPath } = options;
  await fs.mkdir(path.dirname(socketPath), { recursive: true });
  await removeStaleSocket(socketPath);
  const server = new grpc.Server();
  server.addService(csiIdentityService().service, options.identity);
  server.addService(csiNodeService().service, options.node);
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
  // kubelet and the sidecars run as root; nobody else has business here.
  await fs.chmod(socketPath, 0o660);
  return {
    close: async () => {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      await fs.rm(socketPath, { force: true });
    },
  };
}

/** A socket left by a previous run (SIGKILL) would make bind fail with EADDRINUSE. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let stat;
  try {
    stat = await fs.lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) {
    throw new Error(`refusing to replace ${socketPath}: it exists and is not a socket; check --endpoint`);
  }
  await fs.unlink(socketPath);
}
