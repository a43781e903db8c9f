/**
 * The one gRPC connection to the SPIRE agent's admin socket, shared by the
 * node-wide bundle stream and every volume's SVID stream. The calls go through
 * the driver's own HTTP/2 gRPC client (h2-grpc-client.ts), which holds a third
 * of grpc-js's memory per open stream.
 *
 * When the agent restarts it deletes and re-creates its socket file
 * (https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/api/endpoints_posix.go).
 * A client would find the new socket
 * only after its reconnect backoff, so the socket's
 * directory is watched (chokidar) and, when the socket appears again, the
 * client is replaced and every stream is told to reconnect at once.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { decodeMessage, encodeMessage, type MessageSchema } from '../protobuf/codec.js';
import { DRIVER_VERSION } from '../version.js';
import { H2GrpcClient, type GrpcMethod, type ServerStreamCall } from './h2-grpc-client.js';
import {
  DELEGATED_IDENTITY_METHODS,
  DELEGATED_IDENTITY_SERVICE_NAME,
  type FetchJwtSvidsRequest,
  type FetchJwtSvidsResponse,
  type SubscribeToJwtBundlesResponse,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsRequest,
  type SubscribeToX509SvidsResponse,
} from './messages.js';

/**
 * What a ResilientStream uses of one server-streaming call: H2GrpcClient's
 * call in production, a hand-driven fake in the unit tests
 * (test/support/fakes/fake-agent.ts).
 */
export type AgentStreamCall<T> = ServerStreamCall<T>;

export interface DelegatedIdentityClient {
  subscribeToX509Svids(request: SubscribeToX509SvidsRequest): AgentStreamCall<SubscribeToX509SvidsResponse>;
  subscribeToX509Bundles(): AgentStreamCall<SubscribeToX509BundlesResponse>;
  /** Unary; rejects with a CallError. */
  fetchJwtSvids(request: FetchJwtSvidsRequest, deadlineMs: number): Promise<FetchJwtSvidsResponse>;
  subscribeToJwtBundles(): AgentStreamCall<SubscribeToJwtBundlesResponse>;
}

/**
 * What the streams (ResilientStream, ManagedVolume, BundleWatcher) need of the
 * agent connection: a client to open calls on, and word when the admin socket
 * re-appears. AgentConnection implements it; the unit tests use a fake whose
 * calls they drive by hand.
 */
export interface AgentStreamConnection {
  readonly socketPath: string;
  /** Bumped each time the client is replaced, so streams can tell stale calls. */
  readonly generation: number;
  socketExists(): boolean;
  client(): DelegatedIdentityClient;
  on(event: 'socket-ready', listener: () => void): unknown;
  off(event: 'socket-ready', listener: () => void): unknown;
}

interface DelegatedIdentityMethods {
  subscribeToX509Svids: GrpcMethod<SubscribeToX509SvidsRequest, SubscribeToX509SvidsResponse>;
  subscribeToX509Bundles: GrpcMethod<Record<string, never>, SubscribeToX509BundlesResponse>;
  fetchJwtSvids: GrpcMethod<FetchJwtSvidsRequest, FetchJwtSvidsResponse>;
  subscribeToJwtBundles: GrpcMethod<Record<string, never>, SubscribeToJwtBundlesResponse>;
}

let methods: DelegatedIdentityMethods | undefined;

/** The four methods' paths and protobuf codecs (protobuf/codec.ts with the schemas of messages.ts). */
function delegatedIdentityMethods(): DelegatedIdentityMethods {
  const method = <Request, Response>(
    { name, request, response }: { name: string; request: MessageSchema; response: MessageSchema },
    snapshots = false,
  ): GrpcMethod<Request, Response> => ({
    path: `/${DELEGATED_IDENTITY_SERVICE_NAME}/${name}`,
    serialize: (value) => encodeMessage(request, value as object),
    deserialize: (bytes) => decodeMessage<Response>(response, bytes),
    snapshots,
  });
  methods ??= {
    // Snapshots (F6) re-sent to every volume on each bundle change: a repeat
    // is dropped unread. The two bundle streams, one per driver, keep every
    // message, so a bundle rejected once is rejected (and counted) again.
    subscribeToX509Svids: method(DELEGATED_IDENTITY_METHODS.subscribeToX509Svids, true),
    subscribeToX509Bundles: method(DELEGATED_IDENTITY_METHODS.subscribeToX509Bundles),
    fetchJwtSvids: method(DELEGATED_IDENTITY_METHODS.fetchJwtSvids),
    subscribeToJwtBundles: method(DELEGATED_IDENTITY_METHODS.subscribeToJwtBundles),
  };
  return methods;
}

export interface AgentConnectionOptions {
  socketPath: string;
  maxReceiveMessageBytes: number;
  logger: Logger;
}

const SOCKET_EVENT_SETTLE_MS = 50;

/** Events: 'socket-ready' — the admin socket (re)appeared; streams should reconnect now. */
export class AgentConnection extends EventEmitter implements AgentStreamConnection {
  private h2: H2GrpcClient;
  private watcher: FSWatcher | undefined;
  private closed = false;
  private settleTimer: NodeJS.Timeout | undefined;
  /** Bumped each time the client is replaced, so streams can tell stale calls. */
  generation = 0;

  constructor(private readonly options: AgentConnectionOptions) {
    super();
    this.setMaxListeners(0); // one listener per live volume stream
    this.h2 = this.createClient();
  }

  get socketPath(): string {
    return this.options.socketPath;
  }

  socketExists(): boolean {
    try {
      return fs.statSync(this.options.socketPath).isSocket();
    } catch {
      return false;
    }
  }

  client(): DelegatedIdentityClient {
    const h2 = this.h2;
    const m = delegatedIdentityMethods();
    return {
      subscribeToX509Svids: (request) => h2.serverStream(m.subscribeToX509Svids, request),
      subscribeToX509Bundles: () => h2.serverStream(m.subscribeToX509Bundles, {}),
      // Unary, unlike the streams: a deadline, so a hung agent fails the fetch and its retry takes over.
      fetchJwtSvids: (request, deadlineMs) => h2.unary(m.fetchJwtSvids, request, deadlineMs),
      subscribeToJwtBundles: () => h2.serverStream(m.subscribeToJwtBundles, {}),
    };
  }

  /** Starts watching the socket directory. Resolves once the watcher is armed. */
  async start(): Promise<void> {
    const directory = path.dirname(this.options.socketPath);
    // chokidar reports nothing for a directory that does not exist yet. The
    // agent creates it too (0755) if missing, so creating it first is harmless;
    // where it cannot be created (read-only mount) reconnects rely on backoff.
    try {
      fs.mkdirSync(directory, { recursive: true, mode: 0o755 });
    } catch (err) {
      this.options.logger.warn(
        { directory, err: errorMessage(err) },
        'the SPIRE agent socket directory does not exist and cannot be created; reconnects rely on backoff alone',
      );
      return;
    }
    const watcher = watch(directory, { ignoreInitial: true, depth: 0, persistent: true });
    this.watcher = watcher;
    // 'add' after a clean stop (the agent removed its socket); 'change' after a
    // crash, when the restarted agent replaces the stale socket file in place.
    const onSocketEvent = (changed: string): void => {
      if (path.resolve(changed) !== path.resolve(this.options.socketPath)) return;
      // An agent start produces several events in a row (create, then chmod
      // 0770): reconnect once, when they have settled.
      clearTimeout(this.settleTimer);
      this.settleTimer = setTimeout(() => this.onSocketAppeared(), SOCKET_EVENT_SETTLE_MS);
    };
    watcher.on('add', onSocketEvent);
    watcher.on('change', onSocketEvent);
    watcher.on('error', (err) => {
      this.options.logger.warn(
        { err: errorMessage(err), directory },
        'watching the SPIRE agent socket directory failed; reconnects rely on backoff alone',
      );
    });
    await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.settleTimer);
    await this.watcher?.close();
    this.h2.close();
  }

  private onSocketAppeared(): void {
    if (this.closed) return;
    this.options.logger.info({ socket: this.options.socketPath }, 'SPIRE agent admin socket appeared; reconnecting streams');
    const previous = this.h2;
    this.h2 = this.createClient();
    this.generation += 1;
    previous.close();
    this.emit('socket-ready');
  }

  /** A fresh client: a new connection, and none of the old one's reconnect backoff. */
  private createClient(): H2GrpcClient {
    return new H2GrpcClient({
      socketPath: this.options.socketPath,
      maxReceiveMessageBytes: this.options.maxReceiveMessageBytes,
      userAgent: `spire-csi-driver/${DRIVER_VERSION}`,
    });
  }
}
