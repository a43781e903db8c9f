#!/usr/bin/env node
/**
 * STAND-IN for kubernetes-csi's csi-node-driver-registrar, following the
 * behaviour of v2.17.0 (registry.k8s.io/sig-storage/csi-node-driver-registrar,
 * the sidecar charts/spire-csi-driver runs). Test clusters only.
 *
 * Why it exists: the real registrar cannot be built here. The Go module proxy
 * refuses github.com/kubernetes-csi/node-driver-registrar altogether (403 on the
 * version list, the tags and pseudo-versions) and no image registry is
 * reachable, so our real-cluster tests run this instead, from an image with
 * Node.js, the compiled dist/ and the production node_modules.
 *
 * What it does, as v2.17.0 does:
 *   - waits (without limit, "Still connecting" every 10 s) for the CSI socket
 *     at --csi-address and asks csi.v1.Identity/GetPluginInfo for the driver
 *     name, within --timeout; exits 1 if that fails or the name is empty;
 *   - removes a stale <--plugin-registration-path>/<name>-reg.sock (refuses,
 *     exit 1, if something other than a socket is there), and serves kubelet's
 *     pluginregistration.Registration service on it (mode 0700, like the real
 *     one's umask 0077): GetInfo answers {type "CSIPlugin", name, endpoint
 *     --kubelet-registration-path, supported_versions ["1.0.0"]};
 *     NotifyRegistrationStatus with plugin_registered=false logs kubelet's error
 *     and exits 1 at once, without answering, so that the container restart
 *     retries the registration;
 *   - serves GET /healthz on --http-endpoint (none when empty, the default):
 *     200 "ok" when the registration socket exists and answers GetInfo with the
 *     driver's name within --timeout; 500 and the reason when it does not
 *     answer or is not a socket; 404 "registration socket does not exist" when
 *     it is gone. (404, not 500, is what v2.17.0 answers; kubelet's httpGet
 *     probe fails on either.)
 *   - on SIGTERM removes the registration socket and exits 0.
 *
 * Where it differs, on purpose:
 *   - ":port" listens on 127.0.0.1, not on every interface (see
 *     common.ts parseListenAddress);
 *   - SIGINT is handled like SIGTERM (convenient when run by hand);
 *   - logs are plain lines on stderr, not klog; --v gates the same messages.
 *
 * What it does NOT do: Windows (named pipes, the Windows socket checks);
 * --mode (v2.17.0 still accepts the deprecated --mode=kubelet-registration-probe
 * as a no-op); --health-port, --enable-pprof, --connection-timeout, --version
 * and klog's other flags (--vmodule, --logging-format, ...): they are refused
 * as unknown flags, since our chart does not pass them.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadProtoPackage, lookupService } from '../../../test/support/grpc-services.js';
import {
  callUnary,
  connectUnix,
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
  UsageError,
  verbosityFlag,
  waitForConnection,
  waitForReady,
  type HealthAnswer,
  type HttpServer,
  type ListenAddress,
  type StandinCli,
  type StandinCommandLine,
  type StandinDependencies,
  type StandinLog,
} from './common.js';

const PROGRAM = 'node-driver-registrar';

/** The only version of kubelet's CSI plugin API there is; v2.17.0 advertises exactly this. */
export const SUPPORTED_VERSIONS: readonly string[] = ['1.0.0'];

/** PluginInfo.type for CSI drivers (registerapi.CSIPlugin). */
export const CSI_PLUGIN_TYPE = 'CSIPlugin';

export const REGISTRAR_FLAGS = {
  'csi-address': { default: '/run/csi/socket', help: 'Path of the CSI driver socket the registrar connects to.' },
  'kubelet-registration-path': { default: '', help: 'Path of the CSI driver socket on the host, handed to kubelet (required).' },
  'plugin-registration-path': { default: '/registration', help: "Path to kubelet's plugin registration directory." },
  'http-endpoint': { default: '', help: 'host:port or :port (127.0.0.1 in this stand-in) for /healthz; empty disables it.' },
  timeout: { default: '1s', help: 'Timeout of each call to the driver and of the /healthz GetInfo check.' },
  v: { default: '0', help: 'Log verbosity.' },
};

export interface RegistrarOptions {
  csiAddress: string;
  kubeletRegistrationPath: string;
  pluginRegistrationPath: string;
  /** undefined: no HTTP server, as with the real one's default empty --http-endpoint. */
  httpEndpoint: ListenAddress | undefined;
  timeoutMs: number;
  verbosity: number;
}

export type RegistrarCommandLine = StandinCommandLine<RegistrarOptions>;

export function parseRegistrarCommandLine(argv: readonly string[]): RegistrarCommandLine {
  return parseStandinCommandLine(argv, REGISTRAR_FLAGS, (flags) => {
    if (flags['kubelet-registration-path'] === '') {
      // Exit code 1, as the real one (a log line and exit, not a flag error).
      throw new UsageError('kubelet-registration-path is a required parameter', 1);
    }
    return {
      csiAddress: socketPathFlag('csi-address', flags['csi-address']),
      kubeletRegistrationPath: flags['kubelet-registration-path'],
      pluginRegistrationPath: flags['plugin-registration-path'],
      httpEndpoint: flags['http-endpoint'] === '' ? undefined : parseListenAddress('http-endpoint', flags['http-endpoint']),
      timeoutMs: positiveDurationFlag('timeout', flags.timeout),
      verbosity: verbosityFlag(flags.v),
    };
  });
}

let registrationPackage: grpc.GrpcObject | undefined;

/** pluginregistration.Registration, loaded from pluginregistration.proto with the driver's loader and options. */
export function registrationService(): grpc.ServiceClientConstructor {
  registrationPackage ??= loadProtoPackage(path.join('e2e', 'cluster', 'standins'), 'pluginregistration.proto');
  return lookupService(registrationPackage, 'pluginregistration.Registration');
}

/** PluginInfo as decoded with PROTO_LOADER_OPTIONS (snake_case, defaults filled in). */
export interface PluginInfo {
  type: string;
  name: string;
  endpoint: string;
  supported_versions: string[];
}

export interface RegistrationStatus {
  plugin_registered: boolean;
  error: string;
}

export interface RunningRegistrar {
  readonly driverName: string;
  /** <plugin-registration-path>/<driverName>-reg.sock */
  readonly socketPath: string;
  /** Where /healthz is served (with the actual port when 0 was asked for); undefined when disabled. */
  readonly httpAddress: ListenAddress | undefined;
  /**
   * The exit code the real registrar would exit with, once it would: 1 after
   * kubelet reported a failed registration or the HTTP server failed, 0 after
   * stop(). The CLI entry exits with it; tests await it.
   */
  readonly exited: Promise<number>;
  /** What SIGTERM does: remove the registration socket and stop serving; exited resolves with 0. */
  stop(): Promise<void>;
}

export type RegistrarDependencies = StandinDependencies;

/** Registers the driver behind options.csiAddress with kubelet, as the real registrar's main() does. */
export async function startRegistrar(options: RegistrarOptions, deps: RegistrarDependencies): Promise<RunningRegistrar> {
  const { log } = deps;
  const driverName = await discoverDriverName(options, deps);
  const socketPath = path.join(options.pluginRegistrationPath, `${driverName}-reg.sock`);
  await removeStaleSocket(socketPath);
  const registration = new RegistrationServer(driverName, options, log);
  log.info('Starting Registration Server', { socketPath });
  await registration.listen(socketPath);
  log.info('Registration Server started', { socketPath });

  let http: HttpServer | undefined;
  try {
    http = await startHealthServer(options, driverName, socketPath, log, (err) => void registration.exit(1, 'HTTP server failed', err));
  } catch (err) {
    registration.shutDown();
    throw err;
  }
  registration.onExit(() => http?.close());
  return {
    driverName,
    socketPath,
    httpAddress: http?.address,
    exited: registration.exited,
    stop: () => registration.stop(socketPath),
  };
}

/** Waits for the CSI socket, then GetPluginInfo within --timeout (csirpc.GetDriverName). */
async function discoverDriverName(options: RegistrarOptions, deps: RegistrarDependencies): Promise<string> {
  const { log } = deps;
  const client = csiIdentityClient(options.csiAddress);
  try {
    log.v(1, 'Attempting to open a gRPC connection', { csiAddress: options.csiAddress });
    await waitForConnection(client, options.csiAddress, log, deps.signal);
    log.v(1, 'Calling CSI driver to discover driver name');
    const name = await getDriverName(client, Date.now() + options.timeoutMs);
    log.v(2, 'CSI driver name', { csiDriverName: name });
    return name;
  } finally {
    client.close();
  }
}

/** util.CleanupSocketFile: a socket left by a killed registrar goes; anything else there is an error. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (await socketExists(socketPath)) await fs.unlink(socketPath);
}

/** util.DoesSocketExist (stat, so a symlink to a socket counts): false if absent, throws if not a socket. */
async function socketExists(socketPath: string): Promise<boolean> {
  try {
    const stat = await fs.stat(socketPath);
    if (stat.isSocket()) return true;
    throw new Error(`file exists in socketPath ${socketPath} but it's not a socket`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** The gRPC side: the Registration service on the -reg.sock, and the registrar's way out. */
class RegistrationServer {
  readonly exited: Promise<number>;
  private readonly server = new grpc.Server();
  private resolveExit: (code: number) => void = () => undefined;
  private finished = false;
  private readonly exitHooks: (() => Promise<void> | undefined)[] = [];

  constructor(
    private readonly driverName: string,
    private readonly options: RegistrarOptions,
    private readonly log: StandinLog,
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
    this.server.addService(registrationService().service, {
      GetInfo: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<PluginInfo>) => callback(null, this.getInfo()),
      NotifyRegistrationStatus: (call: grpc.ServerUnaryCall<RegistrationStatus, unknown>, callback: grpc.sendUnaryData<object>) =>
        this.notifyRegistrationStatus(call.request, callback),
    });
  }

  async listen(socketPath: string): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(new Error(`Failed to listen on socket ${socketPath}: ${err.message}`)) : resolve(),
      );
    });
    // The real one binds under umask 0077: only root (kubelet) may connect.
    await fs.chmod(socketPath, 0o700);
  }

  onExit(hook: () => Promise<void> | undefined): void {
    this.exitHooks.push(hook);
  }

  private getInfo(): PluginInfo {
    this.log.v(4, 'Received GetInfo call');
    return {
      type: CSI_PLUGIN_TYPE,
      name: this.driverName,
      endpoint: this.options.kubeletRegistrationPath,
      supported_versions: [...SUPPORTED_VERSIONS],
    };
  }

  private notifyRegistrationStatus(status: RegistrationStatus, callback: grpc.sendUnaryData<object>): void {
    this.log.info('Received NotifyRegistrationStatus call', { plugin_registered: status.plugin_registered, error: status.error });
    if (status.plugin_registered) {
      // v2.17.0 logs only the line above; this one makes the outcome plain in our test logs.
      this.log.info('kubelet registered the plugin', { driverName: this.driverName });
      callback(null, {});
      return;
    }
    // The real one calls os.Exit(1) inside this handler: kubelet never gets an
    // answer, and the container restart starts the registration over.
    void this.exit(1, 'Registration process failed with error, restarting registration container', status.error);
  }

  /** SIGTERM: the socket goes first, so kubelet's plugin watcher sees the driver leave. */
  async stop(socketPath: string): Promise<void> {
    if (this.finished) return;
    try {
      await fs.rm(socketPath, { force: true });
    } catch (err) {
      await this.exit(1, 'Failed to remove socket with error', errorText(err));
      return;
    }
    await this.exit(0);
  }

  /** Stops serving at once, like a process exit (in-flight calls are dropped), then resolves exited. */
  async exit(code: number, reason?: string, detail?: unknown): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    if (reason !== undefined) this.log.error(reason, { err: detail === undefined ? undefined : errorText(detail) });
    this.shutDown();
    await Promise.all(this.exitHooks.map(async (hook) => hook()));
    this.resolveExit(code);
  }

  shutDown(): void {
    this.server.forceShutdown();
  }
}

async function startHealthServer(
  options: RegistrarOptions,
  driverName: string,
  socketPath: string,
  log: StandinLog,
  onError: (err: Error) => void,
): Promise<HttpServer | undefined> {
  if (options.httpEndpoint === undefined) {
    log.info('Skipping HTTP server');
    return undefined;
  }
  log.info('Starting HTTP server', { endpoint: `${options.httpEndpoint.host}:${options.httpEndpoint.port}` });
  const handler = healthzHandler(() => healthz(driverName, socketPath, options.timeoutMs, log));
  return listenHttp(options.httpEndpoint, handler, onError);
}

/** v2.17.0's /healthz: is the registration socket there, and does it still answer GetInfo with our name? */
export async function healthz(driverName: string, socketPath: string, timeoutMs: number, log: StandinLog): Promise<HealthAnswer> {
  let exists: boolean;
  try {
    exists = await socketExists(socketPath);
  } catch (err) {
    log.error('Health check failed', { err: errorText(err) });
    return { status: 500, body: errorText(err) };
  }
  if (!exists) {
    log.error('Health check failed, registration socket does not exist');
    return { status: 404, body: 'registration socket does not exist' };
  }
  const problem = await checkLiveRegistrationSocket(driverName, socketPath, timeoutMs, log);
  if (problem !== undefined) {
    log.error('Health check failed', { err: problem });
    return { status: 500, body: problem };
  }
  log.v(5, 'Health check succeeded');
  return { status: 200, body: 'ok' };
}

/** Dials the registration socket as kubelet would and asks GetInfo; returns what is wrong, if anything. */
async function checkLiveRegistrationSocket(driverName: string, socketPath: string, timeoutMs: number, log: StandinLog): Promise<string | undefined> {
  log.v(4, 'Attempting to open a gRPC connection', { socketfile: socketPath });
  const client = connectUnix(registrationService(), socketPath);
  try {
    // Wait for the connection as the real one's blocking dial does, but only
    // within --timeout, so that a dead socket cannot pile up requests.
    const deadline = Date.now() + timeoutMs;
    await waitForReady(client, deadline).catch((err: unknown) => {
      throw new Error(`rpc error: code = DeadlineExceeded desc = ${errorText(err)}`);
    });
    const info = (await callUnary(client, 'GetInfo', {}, { deadline })) as PluginInfo;
    return info.name === driverName ? undefined : `invalid driver name ${info.name}`;
  } catch (err) {
    return `error getting info from node-registrar socket: ${grpcErrorText(err)}`;
  } finally {
    client.close();
  }
}

/** The CLI: parse flags, register, exit with the code the real registrar would. */
const REGISTRAR_CLI: StandinCli<RegistrarOptions> = {
  program: PROGRAM,
  parse: parseRegistrarCommandLine,
  usageFlags: REGISTRAR_FLAGS,
  describe: (options) => ({
    message: 'TypeScript stand-in for csi-node-driver-registrar, following v2.17.0 (spire-csi-driver test clusters only)',
    fields: {
      csiAddress: options.csiAddress,
      kubeletRegistrationPath: options.kubeletRegistrationPath,
      pluginRegistrationPath: options.pluginRegistrationPath,
    },
  }),
  start: startRegistrar,
};

if (isMainModule(import.meta.url)) standinMain(REGISTRAR_CLI);
