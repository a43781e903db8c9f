/** The CSI gRPC server on its Unix socket, serving csi.v1.Identity and csi.v1.Node. */
import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { H2GrpcServer, type UnaryMethodHandler } from './h2-grpc-server.js';
import { CSI_IDENTITY_METHODS, CSI_NODE_METHODS } from './messages.js';

/**
 * What close() did with the socket file: removed it; found it already gone; or
 * left it because another process has bound a new socket at the path since
 * (another driver instance started on the same endpoint), so that kubelet keeps
 * reaching that instance.
 */
export type SocketCleanup = 'removed' | 'gone' | 'replaced';

export interface CsiServer {
  close(): Promise<SocketCleanup>;
}

/** sun_path of sockaddr_un is 108 bytes on Linux, the last one for the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export async function startCsiServer(options: {
  socketPath: string;
  identity: Record<string, UnaryMethodHandler>;
  node: Record<string, UnaryMethodHandler>;
}): Promise<CsiServer> {
  const { socketPath } = options;
  await fs.mkdir(path.dirname(socketPath), { recursive: true });
  await removeStaleSocket(socketPath);
  const server = new H2GrpcServer([
    { methods: CSI_IDENTITY_METHODS, handlers: options.identity },
    { methods: CSI_NODE_METHODS, handlers: options.node },
  ]);
  // Bound under a scratch name, then renamed into place. libuv unlinks a
  // listening Unix socket's path *by name* when it closes it, so a server bound
  // at socketPath would delete, on shutdown, whatever socket is at that path by
  // then, another instance's included. Renamed, libuv only ever unlinks the
  // scratch name (gone by then) and removing socketPath is up to close() below.
  // The socket also appears at its path with its final mode.
  const bindPath = path.join(path.dirname(socketPath), `.bind-${randomBytes(3).toString('hex')}`);
  if (Buffer.byteLength(bindPath) > MAX_SOCKET_PATH_BYTES) {
    throw new Error(
      `the CSI socket's directory ${path.dirname(socketPath)} is too long for a Unix socket path ` +
        `(${bindPath} would be ${Buffer.byteLength(bindPath)} bytes, at most ${MAX_SOCKET_PATH_BYTES}); choose a shorter --endpoint`,
    );
  }
  await server.listen(bindPath);
  let bound: Stats;
  try {
    // kubelet and the sidecars run as root; nobody else has business here.
    await fs.chmod(bindPath, 0o660);
    await fs.rename(bindPath, socketPath);
    // The socket file this process created, by identity rather than by name: a
    // driver instance started later on the same endpoint replaces it with its
    // own at the same path, and stopping this one must not delete that one.
    bound = await fs.lstat(socketPath);
  } catch (err) {
    await server.close();
    await fs.rm(bindPath, { force: true });
    throw err;
  }
  return {
    close: async () => {
      // Checked and unlinked before the shutdown, while this server's listening
      // socket still holds the file's inode: the inode number cannot then have
      // been reused for another instance's socket, so a match means it is ours.
      // (New connections fail from here on, as they would a moment later.)
      let cleanup: SocketCleanup | undefined;
      let cleanupError: unknown;
      try {
        cleanup = await removeOwnSocket(socketPath, bound);
      } catch (err) {
        cleanupError = err;
      }
      await server.close();
      if (cleanup === undefined) throw cleanupError;
      return cleanup;
    },
  };
}

/**
 * Unlinks the socket file only if it is still the one this process bound (same
 * device and inode). The lstat and the unlink are two calls, but with the state
 * directory lock held no other instance binds in between: one that starts
 * later waits for the lock, which is released only after this, before it
 * touches the socket.
 */
async function removeOwnSocket(socketPath: string, bound: { dev: number; ino: number }): Promise<SocketCleanup> {
  let current;
  try {
    current = await fs.lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw err;
  }
  if (current.dev !== bound.dev || current.ino !== bound.ino) return 'replaced';
  await fs.rm(socketPath, { force: true });
  return 'removed';
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
