/**
 * The one gRPC connection to the SPIRE agent's admin socket, shared by the
 * node-wide bundle stream and every volume's SVID stream.
 *
 * When the agent restarts it deletes and re-creates its socket file
 * (https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/api/endpoints_posix.go).
 * grpc-js would find the new socket
 * only after its own reconnect backoff (up to minutes), so the socket's
 * directory is watched (chokidar) and, when the socket appears again, the
 * client is replaced and every stream is told to reconnect at once.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { watch, type FSWatcher } from 'chokidar';
import { errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import {
  delegatedIdentityService,
  type FetchJwtSvidsRequest,
  type FetchJwtSvidsResponse,
  type SubscribeToJwtBundlesResponse,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsRequest,
  type SubscribeToX509SvidsResponse,
} from './messages.js';

/**
 * What a ResilientStream uses of one server-streaming call: grpc-js's
 * ClientReadableStream in production, a hand-driven fake in the unit tests
 * (test/support/fakes/fake-agent.ts). grpc-js emits 'error' for a status other
 * than OK, then 'status' in every case.
 */
export interface AgentStreamCall<T> {
  on(event: 'data', listener: (message: T) => void): unknown;
  on(event: 'error', listener: (err: grpc.ServiceError) => void): unknown;
  on(event: 'status', listener: (status: grpc.StatusObject) => void): unknown;
  cancel(): void;
}

export interface DelegatedIdentityClient {
  subscribeToX509Svids(request: SubscribeToX509SvidsRequest): AgentStreamCall<SubscribeToX509SvidsResponse>;
  subscribeToX509Bundles(): AgentStreamCall<SubscribeToX509BundlesResponse>;
  /** Unary; rejects with the grpc-js ServiceError. */
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

interface GeneratedDelegatedIdentityClient extends grpc.Client {
  SubscribeToX509SVIDs(request: SubscribeToX509SvidsRequest): grpc.ClientReadableStream<SubscribeToX509SvidsResponse>;
  SubscribeToX509Bundles(request: Record<string, never>): grpc.ClientReadableStream<SubscribeToX509BundlesResponse>;
  FetchJWTSVIDs(
    request: FetchJwtSvidsRequest,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, response?: FetchJwtSvidsResponse) => void,
  ): grpc.ClientUnaryCall;
  SubscribeToJWTBundles(request: Record<string, never>): grpc.ClientReadableStream<SubscribeToJwtBundlesResponse>;
}

export interface AgentConnectionOptions {
  socketPath: string;
  maxReceiveMessageBytes: number;
  logger: Logger;
}

const SOCKET_EVENT_SETTLE_MS = 50;

/** Events: 'socket-ready' — the admin socket (re)appeared; streams should reconnect now. */
export class AgentConnection extends EventEmitter implements AgentStreamConnection {
  private generated: GeneratedDelegatedIdentityClient;
  private watcher: FSWatcher | undefined;
  private closed = false;
  private settleTimer: NodeJS.Timeout | undefined;
  /** Bumped each time the client is replaced, so streams can tell stale calls. */
  generation = 0;

  constructor(private readonly options: AgentConnectionOptions) {
    super();
    this.setMaxListeners(0); // one listener per live volume stream
    this.generated = this.createClient();
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
    const generated = this.generated;
    return {
      subscribeToX509Svids: (request) => generated.SubscribeToX509SVIDs(request),
      subscribeToX509Bundles: () => generated.SubscribeToX509Bundles({}),
      fetchJwtSvids: (request, deadlineMs) =>
        new Promise((resolve, reject) => {
          // Unary, unlike the streams: a deadline, so a hung agent fails the fetch and its retry takes over.
          generated.FetchJWTSVIDs(request, { deadline: Date.now() + deadlineMs }, (err, response) => {
            if (err) reject(err);
            else resolve(response ?? { svids: [] });
          });
        }),
      subscribeToJwtBundles: () => generated.SubscribeToJWTBundles({}),
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
    this.generated.close();
  }

  private onSocketAppeared(): void {
    if (this.closed) return;
    this.options.logger.info({ socket: this.options.socketPath }, 'SPIRE agent admin socket appeared; reconnecting streams');
    const previous = this.generated;
    this.generated = this.createClient();
    this.generation += 1;
    previous.close();
    this.emit('socket-ready');
  }

  private createClient(): GeneratedDelegatedIdentityClient {
    const Constructor = delegatedIdentityService();
    return new Constructor(`unix:${this.options.socketPath}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': this.options.maxReceiveMessageBytes,
      // grpc-go servers without a keepalive policy (SPIRE's admin API) answer
      // pings more frequent than every 5 minutes with GOAWAY too_many_pings.
      'grpc.keepalive_time_ms': 5 * 60 * 1000,
      'grpc.keepalive_timeout_ms': 20 * 1000,
      'grpc.keepalive_permit_without_calls': 0,
      // A fresh client must get a fresh connection: the global subchannel pool
      // would hand back the old one, still waiting out its reconnect backoff.
      'grpc.use_local_subchannel_pool': 1,
      'grpc.initial_reconnect_backoff_ms': 500,
      'grpc.max_reconnect_backoff_ms': 5000,
    }) as unknown as GeneratedDelegatedIdentityClient;
  }
}
