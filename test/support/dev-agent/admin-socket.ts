/**
 * The development agent's gRPC server on its Unix socket (F1), accepting the
 * connections itself so that they can be cut the way an agent process dying
 * cuts them.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';

export class AdminSocketServer {
  private server: grpc.Server | null = null;
  private listener: net.Server | null = null;
  private readonly connections = new Set<net.Socket>();

  constructor(
    readonly socketPath: string,
    /** Adds the services to each new server. */
    private readonly addServices: (server: grpc.Server) => void,
    /** Once true, a listen() under way is undone instead of completed. */
    private readonly isClosed: () => boolean,
  ) {}

  get listening(): boolean {
    return this.listener !== null;
  }

  /** Serves a new gRPC server on the socket path. */
  async listen(): Promise<void> {
    // F1: the agent creates the parent directory and replaces whatever file
    // sits at the socket path (a stale socket from a crash).
    await fs.mkdir(path.dirname(this.socketPath), { recursive: true, mode: 0o755 });
    await fs.rm(this.socketPath, { force: true });
    const server = new grpc.Server();
    this.addServices(server);
    // Connections are accepted here and handed to grpc-js, so that sever() can
    // cut them the way a crash does.
    const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const listener = net.createServer((socket) => {
      this.connections.add(socket);
      socket.on('close', () => this.connections.delete(socket));
      injector.injectConnection(socket);
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(this.socketPath, () => {
        listener.off('error', reject);
        resolve();
      });
    });
    // F1: only root or the agent's uid/gid may connect.
    await fs.chmod(this.socketPath, 0o770);
    if (this.isClosed()) {
      listener.close();
      server.forceShutdown();
      return;
    }
    this.server = server;
    this.listener = listener;
  }

  /**
   * Stops listening and cuts every connection at the socket level, without
   * HTTP/2 GOAWAY or RST_STREAM, because that is what a client sees when the
   * agent process dies: grpc-js then reports UNAVAILABLE, as against a real
   * agent. A bare forceShutdown() would instead cancel each stream (status
   * CANCELLED), which a client could mistake for its own cancellation. The
   * socket file stays.
   */
  sever(): void {
    for (const socket of this.connections) socket.destroy();
    this.connections.clear();
    this.listener?.close();
    this.listener = null;
    this.server?.forceShutdown();
    this.server = null;
  }
}
