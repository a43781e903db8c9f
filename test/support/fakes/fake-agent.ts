/**
 * The SPIRE agent connection with calls the test drives by hand: every
 * SubscribeToX509SVIDs or SubscribeToX509Bundles call a stream opens is kept,
 * and the test pushes a response on it, fails it with a gRPC status, or ends
 * it, the way grpc-js reports them ('data'; 'error' then 'status'; 'status' OK).
 * Also the material: a trust domain whose CA mints real SVIDs, so the driver's
 * checks pass (docs/design.md invariant 5) without an agent or a socket.
 */
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import type { AgentStreamCall, AgentStreamConnection, DelegatedIdentityClient } from '../../../src/spire/agent-connection.js';
import type {
  FetchJwtSvidsRequest,
  SubscribeToJwtBundlesResponse,
  SubscribeToX509BundlesResponse,
  SubscribeToX509SvidsRequest,
  SubscribeToX509SvidsResponse,
  X509SvidWithKey,
} from '../../../src/spire/messages.js';
import { mintCa, mintSvid, type MintedCa } from '../certs.js';

export class FakeCall<T> extends EventEmitter implements AgentStreamCall<T> {
  cancelled = false;
  /** Failed or ended by the "agent". */
  finished = false;
  /** How many responses were pushed. */
  sent = 0;

  constructor(
    /** The request of an SVID call; undefined for the bundle call. */
    readonly request: SubscribeToX509SvidsRequest | undefined,
    /** The connection's generation when the call was opened. */
    readonly generation: number,
  ) {
    super();
  }

  get isOpen(): boolean {
    return !this.cancelled && !this.finished;
  }

  push(message: T): void {
    this.mustBeOpen('push a response');
    this.sent += 1;
    this.emit('data', message);
  }

  /** The agent fails the call: 'error' with a ServiceError, then 'status'. */
  fail(code: grpc.status, details: string): void {
    this.mustBeOpen('fail');
    this.finished = true;
    const metadata = new grpc.Metadata();
    const err = Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
    this.emit('error', err);
    this.emit('status', { code, details, metadata });
  }

  /** The agent ends the call with OK (it never should). */
  end(): void {
    this.mustBeOpen('end');
    this.finished = true;
    this.emit('status', { code: grpc.status.OK, details: 'OK', metadata: new grpc.Metadata() });
  }

  cancel(): void {
    this.cancelled = true;
  }

  private mustBeOpen(what: string): void {
    if (!this.isOpen) throw new Error(`cannot ${what} on a call that is ${this.cancelled ? 'cancelled' : 'finished'}`);
  }
}

export type SvidCall = FakeCall<SubscribeToX509SvidsResponse>;
export type BundleCall = FakeCall<SubscribeToX509BundlesResponse>;
export type JwtBundleCall = FakeCall<SubscribeToJwtBundlesResponse>;

export class FakeAgentConnection extends EventEmitter implements AgentStreamConnection {
  readonly socketPath = '/fake/spire-agent/admin.sock';
  generation = 0;
  /** What socketExists() answers. */
  socketPresent = true;
  readonly svidCalls: SvidCall[] = [];
  readonly bundleCalls: BundleCall[] = [];
  /** JWT calls, so tests of X.509-only volumes can prove none was made. */
  readonly jwtFetches: FetchJwtSvidsRequest[] = [];
  readonly jwtBundleCalls: JwtBundleCall[] = [];

  socketExists(): boolean {
    return this.socketPresent;
  }

  client(): DelegatedIdentityClient {
    const generation = this.generation;
    return {
      subscribeToX509Svids: (request) => {
        const call: SvidCall = new FakeCall(structuredClone(request), generation);
        this.svidCalls.push(call);
        return call;
      },
      subscribeToX509Bundles: () => {
        const call: BundleCall = new FakeCall(undefined, generation);
        this.bundleCalls.push(call);
        return call;
      },
      fetchJwtSvids: (request) => {
        this.jwtFetches.push(structuredClone(request));
        return Promise.reject(Object.assign(new Error('12 UNIMPLEMENTED: the fake agent issues no JWT-SVIDs'), { code: grpc.status.UNIMPLEMENTED }));
      },
      subscribeToJwtBundles: () => {
        const call: JwtBundleCall = new FakeCall(undefined, generation);
        this.jwtBundleCalls.push(call);
        return call;
      },
    };
  }

  /** The admin socket re-appeared (an agent restart): a new client, and every stream is told. */
  socketReappeared(): void {
    this.generation += 1;
    this.emit('socket-ready');
  }

  /** The SVID calls of one pod (by its k8s:pod-uid selector), oldest first. */
  svidCallsOf(podUid: string): SvidCall[] {
    return this.svidCalls.filter((call) => call.request?.selectors.some((s) => s.type === 'k8s' && s.value === `pod-uid:${podUid}`));
  }

  /** The one open SVID call of a pod; throws unless there is exactly one. */
  openSvidCall(podUid: string): SvidCall {
    const open = this.svidCallsOf(podUid).filter((call) => call.isOpen);
    if (open.length !== 1 || open[0] === undefined) throw new Error(`expected one open SVID call for pod ${podUid}, found ${open.length}`);
    return open[0];
  }

  openSvidCalls(): SvidCall[] {
    return this.svidCalls.filter((call) => call.isOpen);
  }

  /** The one open bundle call; throws unless there is exactly one. */
  openBundleCall(): BundleCall {
    const open = this.bundleCalls.filter((call) => call.isOpen);
    if (open.length !== 1 || open[0] === undefined) throw new Error(`expected one open bundle call, found ${open.length}`);
    return open[0];
  }
}

/** An SVID as the agent sends it, with what the test needs to recognise it. */
export interface FakeSvid {
  message: X509SvidWithKey;
  spiffeId: string;
  /** Lower-case hex. */
  serialHex: string;
}

/** A trust domain with a CA that mints SVIDs, and its bundle responses. */
export class FakeTrustDomain {
  private constructor(
    readonly name: string,
    readonly ca: MintedCa,
  ) {}

  static async create(name = 'example.org'): Promise<FakeTrustDomain> {
    return new FakeTrustDomain(name, await mintCa({ trustDomain: name }));
  }

  get id(): string {
    return `spiffe://${this.name}`;
  }

  /** The bundle stream's response: this trust domain's CA (plus `extraCas`), and `others`' bundles. */
  bundleResponse(options: { extraCas?: Buffer[]; others?: FakeTrustDomain[] } = {}): SubscribeToX509BundlesResponse {
    const response: SubscribeToX509BundlesResponse = {
      ca_certificates: { [this.id]: Buffer.concat([this.ca.certDer, ...(options.extraCas ?? [])]) },
    };
    for (const other of options.others ?? []) response.ca_certificates[other.id] = other.ca.certDer;
    return response;
  }

  async svid(path: string, options: { hint?: string } = {}): Promise<FakeSvid> {
    const spiffeId = `${this.id}${path}`;
    const minted = await mintSvid({ ca: this.ca, spiffeId });
    return {
      spiffeId,
      serialHex: minted.serialHex,
      message: {
        x509_svid: {
          cert_chain: minted.certChain,
          id: { trust_domain: this.name, path },
          expires_at: Math.floor(minted.notAfter.getTime() / 1000),
          hint: options.hint ?? '',
        },
        x509_svid_key: minted.keyPkcs8Der,
      },
    };
  }
}

/** An SVID stream response holding `svids` (none: "no entry matches", fact F5). */
export function svidResponse(...svids: FakeSvid[]): SubscribeToX509SvidsResponse {
  return { x509_svids: svids.map((svid) => svid.message), federates_with: [] };
}
