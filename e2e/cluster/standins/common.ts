/**
 * What the two sidecar stand-ins (node-driver-registrar.ts, livenessprobe.ts)
 * share: Go-style flag and duration parsing, listen addresses, one-line logs,
 * waiting for / calling a gRPC server on a Unix socket the way
 * kubernetes-csi's csi-lib-utils v0.24.0 (used by both real sidecars) does,
 * /healthz serving, and the CLI around it all (runStandinCli).
 *
 * Nothing here is part of the driver; it only runs in our test cluster.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { csiIdentityService } from '../../../test/support/grpc-services.js';

/** A command line the stand-in refuses; exitCode follows the real sidecar (Go's flag package exits 2). */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 2,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface FlagSpec {
  /** Value when the flag is not given. */
  default: string;
  help: string;
}

export type ParsedFlags<K extends string> = { kind: 'help' } | { kind: 'run'; values: Record<K, string> };

/**
 * Parses flags as Go's flag package does for value flags: "-name=value",
 * "--name=value", "-name value" or "--name value", last occurrence wins. Unlike
 * Go it refuses positional arguments, so a typo cannot slip through unnoticed.
 */
export function parseGoFlags<K extends string>(argv: readonly string[], specs: Record<K, FlagSpec>): ParsedFlags<K> {
  const values = Object.fromEntries(Object.entries<FlagSpec>(specs).map(([name, spec]) => [name, spec.default])) as Record<K, string>;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const match = /^--?([^=-][^=]*)(?:=(.*))?$/s.exec(arg);
    if (!match) throw new UsageError(`unexpected argument "${arg}"; every argument must be a flag (--name=value)`);
    const name = match[1] as string;
    if (name === 'h' || name === 'help') return { kind: 'help' };
    if (!Object.hasOwn(specs, name)) {
      throw new UsageError(
        `unknown flag "${arg}"; this stand-in accepts only ${Object.keys(specs)
          .map((n) => `--${n}`)
          .join(', ')}`,
      );
    }
    let value = match[2];
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`flag needs an argument: --${name}`);
    }
    values[name as K] = value;
  }
  return { kind: 'run', values };
}

/** What a stand-in's command line parses to. */
export type StandinCommandLine<O> = { kind: 'help' } | { kind: 'run'; options: O };

/** parseGoFlags, then toOptions (which throws UsageError for bad values) unless help was asked for. */
export function parseStandinCommandLine<K extends string, O>(
  argv: readonly string[],
  specs: Record<K, FlagSpec>,
  toOptions: (flags: Record<K, string>) => O,
): StandinCommandLine<O> {
  const parsed = parseGoFlags(argv, specs);
  return parsed.kind === 'help' ? parsed : { kind: 'run', options: toOptions(parsed.values) };
}

export function usageText(program: string, specs: Record<string, FlagSpec>): string {
  const lines = Object.entries(specs).map(([name, spec]) => `  --${name}  ${spec.help} (default "${spec.default}")`);
  return `Usage of ${program} (TypeScript stand-in):\n${lines.join('\n')}\n`;
}

const GO_DURATION_UNITS_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Go's time.ParseDuration ("3s", "500ms", "1m30s"; a bare number only for "0")
 * in milliseconds. Not src/config.ts parseDuration: that one also takes a bare
 * number as seconds, which the real sidecars would refuse.
 */
export function parseGoDuration(text: string): number | undefined {
  if (text === '0') return 0;
  const pattern = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;
  let total = 0;
  let offset = 0;
  while (offset < text.length) {
    pattern.lastIndex = offset;
    const match = pattern.exec(text);
    if (!match) return undefined;
    total += Number(match[1]) * (GO_DURATION_UNITS_MS[match[2] as string] as number);
    offset = pattern.lastIndex;
  }
  return offset > 0 ? total : undefined;
}

/** A duration flag that must be above zero (a zero timeout would make every call fail at once). */
export function positiveDurationFlag(flag: string, text: string): number {
  const ms = parseGoDuration(text);
  if (ms === undefined || ms <= 0) throw new UsageError(`invalid value "${text}" for flag --${flag}: want a Go duration above 0 such as 1s or 500ms`);
  return ms;
}

/** klog's -v: a non-negative integer. */
export function verbosityFlag(text: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`invalid value "${text}" for flag --v: want a non-negative integer`);
  return Number(text);
}

export interface ListenAddress {
  host: string;
  port: number;
}

/**
 * Deviation from the real sidecars, on purpose: in Go, ":9809" listens on every
 * interface. Our test cluster runs these pods with hostNetwork, where "every
 * interface" means the node's; there everything must listen on loopback only,
 * so an address without a host binds 127.0.0.1. An explicit host
 * ("0.0.0.0:9809", "[::1]:9809") is used as given. Port 0 picks a free port.
 */
export const DEFAULT_LISTEN_HOST = '127.0.0.1';

export function parseListenAddress(flag: string, text: string): ListenAddress {
  const match = /^(|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new UsageError(`invalid value "${text}" for flag --${flag}: want host:port or :port`);
  const host = (match[1] as string).replace(/^\[(.*)\]$/, '$1');
  return { host: host === '' ? DEFAULT_LISTEN_HOST : host, port };
}

/** --csi-address: a socket path, with or without unix://, as csi-lib-utils accepts it. */
export function socketPathFlag(flag: string, text: string): string {
  const socketPath = text.replace(/^unix:\/\//, '');
  if (!path.isAbsolute(socketPath)) throw new UsageError(`invalid value "${text}" for flag --${flag}: want an absolute socket path`);
  return socketPath;
}

export type LogFields = Record<string, string | number | boolean | undefined>;

/**
 * One line per event on stderr: time, I/E, program, message, key=value pairs.
 * Verbose lines (klog's V(n)) only appear when --v is at least n.
 */
export class StandinLog {
  constructor(
    private readonly program: string,
    private readonly verbosity: number,
    private readonly write: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
  ) {}

  info(message: string, fields: LogFields = {}): void {
    this.emit('I', message, fields);
  }

  /** Logged only at --v=level or more. */
  v(level: number, message: string, fields: LogFields = {}): void {
    if (this.verbosity >= level) this.emit('I', message, fields);
  }

  error(message: string, fields: LogFields = {}): void {
    this.emit('E', message, fields);
  }

  private emit(severity: 'I' | 'E', message: string, fields: LogFields): void {
    const pairs = Object.entries(fields)
      .filter(([, value]) => value !== undefined)
      .map(([key, value]) => `${key}=${typeof value === 'string' ? JSON.stringify(value) : String(value)}`);
    this.write([new Date().toISOString(), severity, `${this.program}:`, message, ...pairs].join(' '));
  }
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Channel options matching csi-lib-utils' dialer: reconnect attempts at most a
 * second apart (its backoff has MaxDelay 1s), and a private subchannel pool so
 * that closing this client really closes its connection (grpc-js otherwise
 * shares connections between clients for the same address).
 */
export const SIDECAR_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.initial_reconnect_backoff_ms': 1000,
  'grpc.max_reconnect_backoff_ms': 1000,
  'grpc.use_local_subchannel_pool': 1,
};

export function connectUnix(service: grpc.ServiceClientConstructor, socketPath: string): grpc.Client {
  return new service(`unix:${socketPath}`, grpc.credentials.createInsecure(), SIDECAR_CHANNEL_OPTIONS);
}

export function csiIdentityClient(socketPath: string): grpc.Client {
  return connectUnix(csiIdentityService(), socketPath);
}

/** Resolves once the client is connected; rejects at the deadline ("Failed to connect before the deadline"). */
export function waitForReady(client: grpc.Client, deadline: number): Promise<void> {
  return new Promise((resolve, reject) => client.waitForReady(deadline, (err) => (err ? reject(err) : resolve())));
}

/** How often csi-lib-utils logs "Still connecting" while the socket is not there (connectionLoggingInterval). */
export const STILL_CONNECTING_LOG_INTERVAL_MS = 10_000;

/**
 * Waits, without limit, until the client has a connection, as csi-lib-utils'
 * Connect does when no timeout is given: the sidecars start before the driver
 * has created its socket. Aborting closes the client and rejects.
 */
export async function waitForConnection(client: grpc.Client, socketPath: string, log: StandinLog, signal?: AbortSignal): Promise<void> {
  const onAbort = (): void => client.close();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      signal?.throwIfAborted();
      try {
        await waitForReady(client, Date.now() + STILL_CONNECTING_LOG_INTERVAL_MS);
        return;
      } catch (err) {
        signal?.throwIfAborted();
        if (!/deadline/i.test(errorText(err))) throw err;
        log.info('Still connecting', { address: `unix://${socketPath}` });
      }
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

type UnaryMethod = (
  request: object,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, response?: unknown) => void,
) => grpc.ClientUnaryCall;

/** One unary call on a client made from a loaded service; resolves with the decoded response. */
export function callUnary(client: grpc.Client, method: string, request: object, options: grpc.CallOptions = {}): Promise<unknown> {
  const fn = (client as unknown as Record<string, UnaryMethod | undefined>)[method];
  if (typeof fn !== 'function') return Promise.reject(new Error(`no gRPC method ${method} on this client`));
  return new Promise((resolve, reject) => {
    fn.call(client, request, options, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/** csi-lib-utils rpc.GetDriverName: GetPluginInfo, and an empty name is an error. */
export async function getDriverName(client: grpc.Client, deadline?: number): Promise<string> {
  let response: unknown;
  try {
    response = await callUnary(client, 'GetPluginInfo', {}, deadline === undefined ? {} : { deadline });
  } catch (err) {
    throw new Error(`error retrieving CSI driver name: ${grpcErrorText(err)}`, { cause: err });
  }
  const name = (response as { name?: unknown } | null)?.name;
  if (typeof name !== 'string' || name === '') throw new Error('error retrieving CSI driver name: driver name is empty');
  return name;
}

/** A gRPC error as Go's status error prints it, e.g. "rpc error: code = DeadlineExceeded desc = ...". */
export function grpcErrorText(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'number' && 'details' in err) {
    const name = GO_CODE_NAMES[err.code] ?? `Code(${err.code})`;
    return `rpc error: code = ${name} desc = ${String(err.details)}`;
  }
  return errorText(err);
}

const GO_CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(grpc.status)
    .filter((entry): entry is [string, number] => typeof entry[1] === 'number')
    .map(([name, code]) => [code, name.toLowerCase().replace(/(^|_)([a-z])/g, (_, _sep: string, c: string) => c.toUpperCase())]),
);

/** What a /healthz handler answers. */
export interface HealthAnswer {
  status: number;
  body: string;
}

export interface HttpServer {
  readonly address: ListenAddress;
  close(): Promise<void>;
}

/** Starts an HTTP server; rejects if it cannot listen (the real sidecars then exit 1). */
export async function listenHttp(
  address: ListenAddress,
  handler: (request: http.IncomingMessage, response: http.ServerResponse) => void,
  onError: (err: Error) => void,
): Promise<HttpServer> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', onError);
  const bound = server.address();
  const port = typeof bound === 'object' && bound !== null ? bound.port : address.port;
  return {
    address: { host: address.host, port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Probes use keep-alive; without this close() would wait for them to time out.
        server.closeAllConnections();
      }),
  };
}

/** Go's net/http answers with a text/plain body; so do we. */
export function reply(response: http.ServerResponse, status: number, body: string): void {
  response.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' }).end(body);
}

/** An HTTP handler serving GET /healthz with check's answer, and 404 for every other path, as Go's ServeMux does. */
export function healthzHandler(check: () => Promise<HealthAnswer>): (request: http.IncomingMessage, response: http.ServerResponse) => void {
  return (request, response) => {
    if (new URL(request.url ?? '/', 'http://localhost').pathname !== '/healthz') {
      reply(response, 404, '404 page not found\n');
      return;
    }
    void check().then(({ status, body }) => reply(response, status, body));
  };
}

/** True when the file at metaUrl is the script node was started with (the CLI entry), not an import. */
export function isMainModule(metaUrl: string): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return fs.realpathSync(entry) === fs.realpathSync(fileURLToPath(metaUrl));
  } catch {
    return false;
  }
}

/** What a stand-in's start function gets besides its options. */
export interface StandinDependencies {
  log: StandinLog;
  /** Aborts the wait for the CSI socket (the CLI aborts it on SIGTERM). */
  signal?: AbortSignal;
}

/** A started stand-in, as far as the CLI is concerned. */
export interface RunningStandin {
  /** The exit code, once the stand-in would exit. */
  readonly exited: Promise<number>;
  /** What SIGTERM/SIGINT does once started; exited resolves afterwards. */
  stop(): Promise<void>;
}

/** One sidecar stand-in's CLI, for runStandinCli. */
export interface StandinCli<O extends { verbosity: number }> {
  program: string;
  /** Throws UsageError for a command line the real sidecar refuses. */
  parse(argv: readonly string[]): StandinCommandLine<O>;
  /** The flags --help lists. */
  usageFlags: Record<string, FlagSpec>;
  /** The first log line: what this stand-in is, and the options worth seeing. */
  describe(options: O): { message: string; fields: LogFields };
  start(options: O, deps: Required<StandinDependencies>): Promise<RunningStandin>;
  /** The message of the error line when start fails (its error as err=...); without one, the error itself is the message. */
  startFailureMessage?: string;
}

/** A stand-in's CLI: parse flags, log what it is, run until it exits or is signalled; resolves with the exit code. */
export async function runStandinCli<O extends { verbosity: number }>(cli: StandinCli<O>, argv: readonly string[]): Promise<number> {
  let commandLine: StandinCommandLine<O>;
  try {
    commandLine = cli.parse(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`${cli.program} stand-in: ${err.message}\n`);
    return err.exitCode;
  }
  if (commandLine.kind === 'help') {
    process.stdout.write(usageText(cli.program, cli.usageFlags));
    return 0;
  }
  const { options } = commandLine;
  const log = new StandinLog(cli.program, options.verbosity);
  const { message, fields } = cli.describe(options);
  log.info(message, fields);
  return runUntilExit(cli, options, log);
}

async function runUntilExit<O extends { verbosity: number }>(cli: StandinCli<O>, options: O, log: StandinLog): Promise<number> {
  const abort = new AbortController();
  let running: RunningStandin | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    log.info('Received signal, stopping', { signal });
    if (running) void running.stop();
    else abort.abort();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    running = await cli.start(options, { log, signal: abort.signal });
    // The signal came after the wait for the driver, while starting: honour it now.
    if (abort.signal.aborted) await running.stop();
  } catch (err) {
    // A signal while still waiting for the driver: nothing started, nothing to clean up.
    if (abort.signal.aborted) return 0;
    if (cli.startFailureMessage === undefined) log.error(errorText(err));
    else log.error(cli.startFailureMessage, { err: errorText(err) });
    return 1;
  }
  return running.exited;
}

/** The CLI entry: runStandinCli on process.argv, then exit with its code. */
export function standinMain<O extends { verbosity: number }>(cli: StandinCli<O>): void {
  runStandinCli(cli, process.argv.slice(2)).then(
    // process.exit, not exitCode: open gRPC/HTTP handles must not keep a failed stand-in alive.
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${cli.program} stand-in: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
