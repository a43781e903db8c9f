#!/usr/bin/env node
/**
 * STAND-IN for kubernetes-csi's livenessprobe, following the behaviour of
 * v2.19.0 (registry.k8s.io/sig-storage/livenessprobe, the sidecar
 * charts/spire-csi-driver runs). Test clusters only.
 *
 * Why it exists: the real livenessprobe cannot be built here. The Go module
 * proxy refuses github.com/kubernetes-csi/livenessprobe altogether (403 on the
 * version list, the tags and pseudo-versions) and no image registry is
 * reachable, so our real-cluster tests run this instead, from an image with
 * Node.js, the compiled dist/ and the production node_modules.
 *
 * What it does, as v2.19.0 does:
 *   - at start, waits without limit for the CSI socket at --csi-address and
 *     asks csi.v1.Identity/GetPluginInfo (no deadline) for the driver name;
 *     exits 1 if the call fails or the name is empty. Only then does it listen,
 *     so kubelet's probe meanwhile fails with "connection refused";
 *   - GET /healthz opens a new connection to the CSI socket for every request
 *     (so a restarted driver is picked up without anything to reconnect) and
 *     calls Probe, connection and call together within --probe-timeout:
 *     200 "ok" when Probe succeeds and `ready` is unset or true; 500 with the
 *     error when the socket cannot be reached or Probe fails or times out; 500
 *     "driver responded but is not ready" when ready is false.
 *
 * Where it differs, on purpose:
 *   - ":port" listens on 127.0.0.1, not on every interface (see
 *     common.ts parseListenAddress);
 *   - SIGTERM/SIGINT close the server and exit 0 (Node.js as PID 1 would
 *     otherwise ignore SIGTERM; the Go binary just dies);
 *   - if the HTTP server cannot listen it exits 1 (v2.19.0 logs "Failed to
 *     start http server" and returns from main, i.e. exits 0; either way the
 *     container restarts);
 *   - logs are plain lines on stderr, not klog; --v gates the same messages.
 *
 * What it does NOT do: Windows; metrics (/metrics on --http-endpoint, and
 * --metrics-address, --metrics-path); --health-port; klog's other flags. Those
 * are refused as unknown flags, since our chart does not pass them.
 */
import * as grpc from '@grpc/grpc-js';
import {
  callUnary,
  csiIdentityClient,
  errorText,
  getDriverName,
  grpcErrorText,
  healthzHandler,
  isMainModule,
  listenHttp,
  parseListenAddress,
  parseStandinCommandLine,
  positiveDurationFlag,
  socketPathFlag,
  standinMain,
  verbosityFlag,
  waitForConnection,
  waitForReady,
  type HealthAnswer,
  type ListenAddress,
  type StandinCli,
  type StandinCommandLine,
  type StandinDependencies,
  type StandinLog,
} from './common.js';

const PROGRAM = 'livenessprobe';

export const LIVENESSPROBE_FLAGS = {
  'csi-address': { default: '/run/csi/socket', help: 'Address of the CSI driver socket.' },
  // The real default is --health-port 9808 on 0.0.0.0; here the same port, on loopback.
  'http-endpoint': { default: ':9808', help: 'host:port or :port (127.0.0.1 in this stand-in) for /healthz.' },
  // v2.19.0's default is 3s (charts/spire-csi-driver passes 3s explicitly too).
  'probe-timeout': { default: '3s', help: 'Timeout of connecting to the driver plus its Probe call, per /healthz request.' },
  v: { default: '0', help: 'Log verbosity.' },
};

export interface LivenessProbeOptions {
  csiAddress: string;
  httpEndpoint: ListenAddress;
  probeTimeoutMs: number;
  verbosity: number;
}

export type LivenessProbeCommandLine = StandinCommandLine<LivenessProbeOptions>;

export function parseLivenessProbeCommandLine(argv: readonly string[]): LivenessProbeCommandLine {
  return parseStandinCommandLine(argv, LIVENESSPROBE_FLAGS, (flags) => ({
    csiAddress: socketPathFlag('csi-address', flags['csi-address']),
    httpEndpoint: parseListenAddress('http-endpoint', flags['http-endpoint']),
    probeTimeoutMs: positiveDurationFlag('probe-timeout', flags['probe-timeout']),
    verbosity: verbosityFlag(flags.v),
  }));
}

export interface RunningLivenessProbe {
  readonly driverName: string;
  /** Where /healthz is served, with the actual port when 0 was asked for. */
  readonly httpAddress: ListenAddress;
  /** The CLI's exit code: 1 if the HTTP server fails after it started, 0 after close(). */
  readonly exited: Promise<number>;
  close(): Promise<void>;
}

export type LivenessProbeDependencies = StandinDependencies;

export async function startLivenessProbe(options: LivenessProbeOptions, deps: LivenessProbeDependencies): Promise<RunningLivenessProbe> {
  const { log } = deps;
  const driverName = await discoverDriverName(options.csiAddress, deps);
  let failed: (code: number) => void = () => undefined;
  const exited = new Promise<number>((resolve) => {
    failed = resolve;
  });
  const handler = healthzHandler(() => checkProbe(options.csiAddress, options.probeTimeoutMs, driverName, log));
  log.info('ServeMux listening', { address: `${options.httpEndpoint.host}:${options.httpEndpoint.port}` });
  const server = await listenHttp(options.httpEndpoint, handler, (err) => {
    log.error('Failed to start http server', { err: err.message });
    void server.close().then(() => failed(1));
  });
  return {
    driverName,
    httpAddress: server.address,
    exited,
    close: async () => {
      await server.close();
      failed(0);
    },
  };
}

/** Start-up: wait for the driver's socket however long it takes, then GetPluginInfo without a deadline. */
async function discoverDriverName(csiAddress: string, deps: LivenessProbeDependencies): Promise<string> {
  const { log } = deps;
  const client = csiIdentityClient(csiAddress);
  try {
    await waitForConnection(client, csiAddress, log, deps.signal);
    log.info('Calling CSI driver to discover driver name');
    const name = await getDriverName(client);
    log.info('CSI driver name', { driver: name });
    return name;
  } finally {
    client.close();
  }
}

/** One /healthz: a fresh connection and a Probe, both within timeoutMs. */
export async function checkProbe(csiAddress: string, timeoutMs: number, driverName: string, log: StandinLog): Promise<HealthAnswer> {
  const deadline = Date.now() + timeoutMs;
  const client = csiIdentityClient(csiAddress);
  try {
    try {
      await waitForReady(client, deadline);
    } catch (err) {
      const message = `failed to connect to unix://${csiAddress}: ${errorText(err)}`;
      log.error('Failed to establish connection to CSI driver', { err: message });
      return { status: 500, body: message };
    }
    log.v(5, 'Sending probe request to CSI driver', { driver: driverName });
    return await probe(client, deadline, log);
  } finally {
    client.close();
  }
}

async function probe(client: grpc.Client, deadline: number, log: StandinLog): Promise<HealthAnswer> {
  let response: unknown;
  try {
    response = await callUnary(client, 'Probe', {}, { deadline });
  } catch (err) {
    log.error('Health check failed', { err: grpcErrorText(err) });
    return { status: 500, body: grpcErrorText(err) };
  }
  if (!isReady(response)) {
    log.error('Driver responded but is not ready');
    return { status: 500, body: 'driver responded but is not ready' };
  }
  log.v(5, 'Health check succeeded');
  return { status: 200, body: 'ok' };
}

/** CSI: "If not present, the caller SHALL assume that the plugin is in a ready state". */
export function isReady(response: unknown): boolean {
  const ready = (response as { ready?: { value?: unknown } | null } | null)?.ready;
  return ready === undefined || ready === null || ready.value === true;
}

const LIVENESSPROBE_CLI: StandinCli<LivenessProbeOptions> = {
  program: PROGRAM,
  parse: parseLivenessProbeCommandLine,
  usageFlags: LIVENESSPROBE_FLAGS,
  describe: (options) => ({
    message: 'TypeScript stand-in for livenessprobe, following v2.19.0 (spire-csi-driver test clusters only)',
    fields: { csiAddress: options.csiAddress, probeTimeoutMs: options.probeTimeoutMs },
  }),
  start: async (options, deps) => {
    const probe = await startLivenessProbe(options, deps);
    return { exited: probe.exited, stop: () => probe.close() };
  },
  startFailureMessage: 'Failed to start',
};

if (isMainModule(import.meta.url)) standinMain(LIVENESSPROBE_CLI);
