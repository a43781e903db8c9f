/**
 * The TypeScript stand-ins for csi-node-driver-registrar v2.17.0 and
 * livenessprobe v2.19.0 (e2e/cluster/standins/), against a fake CSI Identity
 * server on a Unix socket, with this test playing kubelet. A fake rather than
 * the driver's own Identity service because the tests need Probe answers the
 * driver never gives (no `ready`, or no answer at all).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { csiIdentityService } from '../support/grpc-services.js';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { callUnary, connectUnix, parseGoDuration, parseListenAddress, StandinLog, UsageError } from '../../e2e/cluster/standins/common.js';
import { isReady, parseLivenessProbeCommandLine, startLivenessProbe, type RunningLivenessProbe } from '../../e2e/cluster/standins/livenessprobe.js';
import {
  parseRegistrarCommandLine,
  registrationService,
  startRegistrar,
  type PluginInfo,
  type RegistrarOptions,
  type RunningRegistrar,
} from '../../e2e/cluster/standins/node-driver-registrar.js';
import { eventually } from '../support/driver-harness.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const DRIVER_NAME = 'csi.spire.io';
/** What the chart passes: the host path of the socket, which kubelet dials. */
const HOST_CSI_SOCKET = '/var/lib/kubelet/plugins/csi.spire.io/csi.sock';
const STANDINS_DIR = path.join(PACKAGE_ROOT, 'dist', 'e2e', 'cluster', 'standins');

type ProbeBehaviour = 'ready' | 'not-ready' | 'unset' | 'hang';

/** csi.v1.Identity with a settable name and Probe answer. */
class FakeIdentity {
  probe: ProbeBehaviour = 'ready';
  name = DRIVER_NAME;
  private server: grpc.Server | undefined;

  constructor(readonly socketPath: string) {}

  async start(): Promise<void> {
    await fs.mkdir(path.dirname(this.socketPath), { recursive: true });
    const server = new grpc.Server();
    server.addService(csiIdentityService().service, {
      GetPluginInfo: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<object>) =>
        callback(null, { name: this.name, vendor_version: 'fake' }),
      GetPluginCapabilities: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<object>) =>
        callback(null, { capabilities: [] }),
      Probe: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<object>) => this.answerProbe(callback),
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    this.server = server;
  }

  /** Stops like a crashed driver: connections drop and the socket file goes. */
  async stop(): Promise<void> {
    this.server?.forceShutdown();
    this.server = undefined;
    await fs.rm(this.socketPath, { force: true });
  }

  private answerProbe(callback: grpc.sendUnaryData<object>): void {
    if (this.probe === 'hang') return;
    if (this.probe === 'unset') callback(null, {});
    else callback(null, { ready: { value: this.probe === 'ready' } });
  }
}

/** Log lines kept for assertions (and printed when a test fails, through the assertion message). */
class Lines {
  readonly lines: string[] = [];
  log(program: string): StandinLog {
    return new StandinLog(program, 5, (line) => this.lines.push(line));
  }
  text(): string {
    return this.lines.join('\n');
  }
}

async function get(address: { host: string; port: number }, pathname = '/healthz'): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://${address.host}:${address.port}${pathname}`);
  return { status: response.status, body: await response.text() };
}

/** kubelet's side of plugin registration: a Registration client on the -reg.sock. */
function kubeletClient(regSocket: string): grpc.Client {
  return connectUnix(registrationService(), regSocket);
}

function call(client: grpc.Client, method: string, request: object): Promise<unknown> {
  return callUnary(client, method, request, { deadline: Date.now() + 5000 });
}

/** A Unix socket file nobody listens on, as a SIGKILLed process leaves it (Node removes it on a clean close). */
async function leaveDeadSocket(socketPath: string): Promise<void> {
  const script = `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => process.stdout.write('up'))`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => child.stdout.once('data', resolve));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  assert.ok((await fs.stat(socketPath)).isSocket());
}

async function exists(file: string): Promise<boolean> {
  return fs.stat(file).then(
    () => true,
    () => false,
  );
}

/** Plays kubelet on the registration socket for body, then hangs up. */
async function asKubelet<T>(regSocket: string, body: (kubelet: grpc.Client) => Promise<T>): Promise<T> {
  const kubelet = kubeletClient(regSocket);
  try {
    return await body(kubelet);
  } finally {
    kubelet.close();
  }
}

interface FakeDriver {
  /** A scratch directory for the describe block. */
  readonly dir: string;
  /** Serving on <dir>/csi/csi.sock. */
  readonly identity: FakeIdentity;
}

/**
 * For the describe block it is called in: a FakeIdentity in a fresh scratch
 * directory from before() to after(); started runs once it serves, stopping
 * before it stops.
 */
function fakeDriverPerSuite(hooks: { started?: (driver: FakeDriver) => Promise<void>; stopping?: () => Promise<void> } = {}): FakeDriver {
  let dir: string;
  let identity: FakeIdentity;
  const driver: FakeDriver = {
    get dir() {
      return dir;
    },
    get identity() {
      return identity;
    },
  };
  before(async () => {
    dir = await makeScratchDir('standins');
    identity = new FakeIdentity(path.join(dir, 'csi', 'csi.sock'));
    await identity.start();
    await hooks.started?.(driver);
  });
  after(async () => {
    await hooks.stopping?.();
    await identity.stop();
    await removeScratchDir(dir);
  });
  return driver;
}

describe('command lines', () => {
  test('the registrar accepts exactly what the chart passes, and defaults the rest as v2.17.0 does', () => {
    const parsed = parseRegistrarCommandLine([
      '--csi-address=/csi/csi.sock',
      `--kubelet-registration-path=${HOST_CSI_SOCKET}`,
      '--http-endpoint=:9809',
      '--v=2',
    ]);
    assert.deepEqual(parsed, {
      kind: 'run',
      options: {
        csiAddress: '/csi/csi.sock',
        kubeletRegistrationPath: HOST_CSI_SOCKET,
        pluginRegistrationPath: '/registration',
        httpEndpoint: { host: '127.0.0.1', port: 9809 },
        timeoutMs: 1000,
        verbosity: 2,
      },
    });
  });

  test('Go flag forms: single dash, separate value, unix:// address, last one wins', () => {
    const parsed = parseRegistrarCommandLine([
      '-csi-address',
      'unix:///x/csi.sock',
      '-kubelet-registration-path=/a',
      '--timeout',
      '500ms',
      '--timeout=2s',
    ]);
    assert.equal(parsed.kind, 'run');
    if (parsed.kind !== 'run') return;
    assert.equal(parsed.options.csiAddress, '/x/csi.sock');
    assert.equal(parsed.options.timeoutMs, 2000);
    assert.equal(parsed.options.httpEndpoint, undefined, 'no --http-endpoint: no HTTP server');
  });

  test('unknown flags, positional arguments and bad values are refused with a clear message', () => {
    const refused = (argv: string[], pattern: RegExp, exitCode = 2): void => {
      assert.throws(
        () => parseRegistrarCommandLine(argv),
        (err: unknown) => {
          assert.ok(err instanceof UsageError);
          assert.match(err.message, pattern);
          assert.equal(err.exitCode, exitCode);
          return true;
        },
      );
    };
    refused(
      ['--kubelet-registration-path=/a', '--mode=kubelet-registration-probe'],
      /unknown flag "--mode=kubelet-registration-probe".*--csi-address/,
    );
    refused(['--kubelet-registration-path=/a', 'extra'], /unexpected argument "extra"/);
    refused(['--kubelet-registration-path=/a', '--timeout=1'], /--timeout: want a Go duration/);
    refused(['--kubelet-registration-path=/a', '--v=high'], /--v/);
    refused(['--kubelet-registration-path=/a', '--http-endpoint=9809'], /host:port/);
    refused(['--kubelet-registration-path'], /needs an argument/);
    refused([], /kubelet-registration-path is a required parameter/, 1);
  });

  test('livenessprobe: chart flags, and v2.19.0 defaults (port 9808, 3s)', () => {
    assert.deepEqual(parseLivenessProbeCommandLine(['--csi-address=/csi/csi.sock', '--http-endpoint=:9808', '--probe-timeout=3s', '--v=2']), {
      kind: 'run',
      options: { csiAddress: '/csi/csi.sock', httpEndpoint: { host: '127.0.0.1', port: 9808 }, probeTimeoutMs: 3000, verbosity: 2 },
    });
    assert.deepEqual(parseLivenessProbeCommandLine([]), {
      kind: 'run',
      options: { csiAddress: '/run/csi/socket', httpEndpoint: { host: '127.0.0.1', port: 9808 }, probeTimeoutMs: 3000, verbosity: 0 },
    });
    assert.throws(() => parseLivenessProbeCommandLine(['--metrics-address=:8080']), /unknown flag/);
    assert.deepEqual(parseLivenessProbeCommandLine(['--help']), { kind: 'help' });
  });

  test('Go durations', () => {
    assert.equal(parseGoDuration('3s'), 3000);
    assert.equal(parseGoDuration('500ms'), 500);
    assert.equal(parseGoDuration('1m30s'), 90_000);
    assert.equal(parseGoDuration('1.5s'), 1500);
    assert.equal(parseGoDuration('0'), 0);
    for (const bad of ['', '3', 's', '3 s', '-1s', '3sec']) assert.equal(parseGoDuration(bad), undefined, bad);
  });

  test('":port" binds loopback (deliberate deviation); an explicit host is kept', () => {
    assert.deepEqual(parseListenAddress('x', ':9809'), { host: '127.0.0.1', port: 9809 });
    assert.deepEqual(parseListenAddress('x', '0.0.0.0:9809'), { host: '0.0.0.0', port: 9809 });
    assert.deepEqual(parseListenAddress('x', '[::1]:0'), { host: '::1', port: 0 });
    assert.throws(() => parseListenAddress('x', ':70000'), UsageError);
  });

  test('CSI ready: unset means ready', () => {
    assert.equal(isReady({ ready: null }), true);
    assert.equal(isReady({}), true);
    assert.equal(isReady({ ready: { value: true } }), true);
    assert.equal(isReady({ ready: { value: false } }), false);
  });
});

describe('node-driver-registrar stand-in', () => {
  const driver = fakeDriverPerSuite();
  let registrationDir: string;

  /** Starts a registrar in the registrationDir the last start() made. */
  function startIn(lines: Lines, overrides: Partial<RegistrarOptions> = {}): Promise<RunningRegistrar> {
    return startRegistrar(
      {
        csiAddress: driver.identity.socketPath,
        kubeletRegistrationPath: HOST_CSI_SOCKET,
        pluginRegistrationPath: registrationDir,
        httpEndpoint: { host: '127.0.0.1', port: 0 },
        timeoutMs: 1000,
        verbosity: 5,
        ...overrides,
      },
      { log: lines.log('node-driver-registrar') },
    );
  }

  /** Starts a registrar in a new registrationDir. */
  async function start(lines: Lines, overrides: Partial<RegistrarOptions> = {}): Promise<RunningRegistrar> {
    registrationDir = await fs.mkdtemp(path.join(driver.dir, 'registration-'));
    return startIn(lines, overrides);
  }

  test('kubelet registers the driver; /healthz follows the registration socket; SIGTERM path removes it', async () => {
    const lines = new Lines();
    const registrar = await start(lines, { httpEndpoint: parseListenAddress('http-endpoint', ':0') });
    const regSocket = path.join(registrationDir, `${DRIVER_NAME}-reg.sock`);
    assert.equal(registrar.socketPath, regSocket);
    assert.equal(registrar.httpAddress?.host, '127.0.0.1', '":0" listens on loopback');
    assert.equal((await fs.stat(regSocket)).mode & 0o777, 0o700);

    await asKubelet(regSocket, async (kubelet) => {
      const info = (await call(kubelet, 'GetInfo', {})) as PluginInfo;
      assert.deepEqual(info, { type: 'CSIPlugin', name: DRIVER_NAME, endpoint: HOST_CSI_SOCKET, supported_versions: ['1.0.0'] });
      assert.deepEqual(await call(kubelet, 'NotifyRegistrationStatus', { plugin_registered: true, error: '' }), {});
    });

    const address = registrar.httpAddress;
    assert.ok(address);
    assert.deepEqual(await get(address), { status: 200, body: 'ok' });
    assert.equal((await get(address, '/other')).status, 404);

    await fs.rm(regSocket);
    // v2.17.0 answers 404 here (not 500); kubelet's httpGet probe fails on any status >= 400.
    assert.deepEqual(await get(address), { status: 404, body: 'registration socket does not exist' });

    await fs.writeFile(regSocket, 'not a socket');
    const notASocket = await get(address);
    assert.equal(notASocket.status, 500);
    assert.match(notASocket.body, /not a socket/);
    await fs.rm(regSocket);

    await registrar.stop();
    assert.equal(await registrar.exited, 0);
    assert.equal(await exists(regSocket), false);
    await assert.rejects(get(address), 'the HTTP server is closed');
    assert.match(lines.text(), /Received NotifyRegistrationStatus call plugin_registered=true/);
    assert.match(lines.text(), /kubelet registered the plugin driverName="csi.spire.io"/);
  });

  test('/healthz is 500 when the socket is there but nobody answers on it', async () => {
    const registrar = await start(new Lines(), { timeoutMs: 300 });
    try {
      const address = registrar.httpAddress;
      assert.ok(address);
      await fs.rm(registrar.socketPath);
      await leaveDeadSocket(registrar.socketPath);
      const answer = await get(address);
      assert.equal(answer.status, 500);
      assert.match(answer.body, /error getting info from node-registrar socket: rpc error: code = DeadlineExceeded/);
    } finally {
      await registrar.stop();
    }
  });

  test('kubelet reporting a failed registration makes it exit 1 without answering', async () => {
    const lines = new Lines();
    const registrar = await start(lines);
    await asKubelet(registrar.socketPath, (kubelet) =>
      assert.rejects(call(kubelet, 'NotifyRegistrationStatus', { plugin_registered: false, error: 'x' })),
    );
    assert.equal(await registrar.exited, 1);
    assert.match(lines.text(), / E node-driver-registrar: Registration process failed with error, restarting registration container err="x"/);
  });

  test('a stale registration socket from a killed registrar is replaced; a regular file there is refused', async () => {
    const first = await start(new Lines(), { httpEndpoint: undefined });
    const regSocket = first.socketPath;
    await first.stop();
    // What a SIGKILLed registrar leaves: a socket file nobody listens on.
    await leaveDeadSocket(regSocket);
    const restart = (): Promise<RunningRegistrar> => startIn(new Lines(), { httpEndpoint: undefined, verbosity: 0 });
    const second = await restart();
    try {
      await asKubelet(regSocket, async (kubelet) => assert.equal(((await call(kubelet, 'GetInfo', {})) as PluginInfo).name, DRIVER_NAME));
    } finally {
      await second.stop();
    }

    await fs.writeFile(regSocket, '');
    await assert.rejects(restart(), /not a socket/);
  });

  test('an empty driver name is an error, as csirpc.GetDriverName makes it', async () => {
    driver.identity.name = '';
    try {
      await assert.rejects(start(new Lines()), /driver name is empty/);
    } finally {
      driver.identity.name = DRIVER_NAME;
    }
  });

  test('it waits for the CSI socket to appear', async () => {
    const late = new FakeIdentity(path.join(driver.dir, 'late', 'csi.sock'));
    const lines = new Lines();
    const starting = start(lines, { csiAddress: late.socketPath, httpEndpoint: undefined });
    await new Promise((resolve) => setTimeout(resolve, 300));
    await late.start();
    const registrar = await starting;
    try {
      assert.equal(registrar.driverName, DRIVER_NAME);
    } finally {
      await registrar.stop();
      await late.stop();
    }
  });
});

describe('livenessprobe stand-in', () => {
  let probe: RunningLivenessProbe;
  const lines = new Lines();
  const driver = fakeDriverPerSuite({
    started: async ({ identity }) => {
      probe = await startLivenessProbe(
        { csiAddress: identity.socketPath, httpEndpoint: parseListenAddress('http-endpoint', ':0'), probeTimeoutMs: 300, verbosity: 5 },
        { log: lines.log('livenessprobe') },
      );
    },
    stopping: () => probe.close(),
  });

  test('it learned the driver name at start and listens on loopback', () => {
    assert.equal(probe.driverName, DRIVER_NAME);
    assert.equal(probe.httpAddress.host, '127.0.0.1');
  });

  test('200 "ok" when Probe says ready, or leaves ready unset', async () => {
    driver.identity.probe = 'ready';
    assert.deepEqual(await get(probe.httpAddress), { status: 200, body: 'ok' });
    driver.identity.probe = 'unset';
    assert.deepEqual(await get(probe.httpAddress), { status: 200, body: 'ok' });
  });

  test('500 when the driver is not ready', async () => {
    driver.identity.probe = 'not-ready';
    assert.deepEqual(await get(probe.httpAddress), { status: 500, body: 'driver responded but is not ready' });
  });

  test('500 when Probe does not answer within --probe-timeout', async () => {
    driver.identity.probe = 'hang';
    const started = Date.now();
    const answer = await get(probe.httpAddress);
    assert.equal(answer.status, 500);
    assert.match(answer.body, /DeadlineExceeded/);
    assert.ok(Date.now() - started < 2000, 'bounded by the probe timeout');
  });

  test('500 while the socket is gone, 200 again once the driver is back (a new connection per probe)', async () => {
    driver.identity.probe = 'ready';
    await driver.identity.stop();
    const gone = await get(probe.httpAddress);
    assert.equal(gone.status, 500);
    assert.match(gone.body, /failed to connect to unix:/);
    await driver.identity.start();
    assert.deepEqual(await get(probe.httpAddress), { status: 200, body: 'ok' });
    assert.match(lines.text(), / E livenessprobe: Failed to establish connection to CSI driver/);
  });
});

/** A compiled CLI started as a child process. */
interface CliRun {
  child: ChildProcess;
  /** stdout and stderr so far. */
  output: () => string;
  exit: Promise<number | null>;
}

/** The compiled CLIs, as the cluster runs them. */
describe('CLI entry points', () => {
  const driver = fakeDriverPerSuite();

  function run(script: string, args: string[]): CliRun {
    const child = spawn(process.execPath, [path.join(STANDINS_DIR, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: string[] = [];
    child.stdout?.on('data', (chunk: Buffer) => chunks.push(chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => chunks.push(chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    // Bounded, with what the stand-in printed: a stand-in that never exits fails its test instead of hanging the run.
    const exit = Promise.race([
      exited,
      new Promise<never>((_, reject) => {
        const timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`${script} did not exit within 20 s (killed); its output:\n${chunks.join('')}`));
        }, 20_000);
        void exited.then(() => clearTimeout(timer));
      }),
    ]);
    exit.catch(() => undefined);
    return { child, output: () => chunks.join(''), exit };
  }

  /** Runs the registrar CLI in a new registration directory until it has registered, then body; kills it afterwards. */
  async function withRegistrarCli(body: (registrar: CliRun, regSocket: string) => Promise<void>): Promise<void> {
    const registration = await fs.mkdtemp(path.join(driver.dir, 'registration-'));
    const args = [
      `--csi-address=${driver.identity.socketPath}`,
      `--kubelet-registration-path=${HOST_CSI_SOCKET}`,
      `--plugin-registration-path=${registration}`,
      '--http-endpoint=:0',
      '--v=2',
    ];
    const registrar = run('node-driver-registrar.js', args);
    const regSocket = path.join(registration, `${DRIVER_NAME}-reg.sock`);
    try {
      await eventually('the registration socket', () => exists(regSocket));
      await body(registrar, regSocket);
    } finally {
      registrar.child.kill('SIGKILL');
    }
  }

  test('an unknown flag exits 2 with a message', async () => {
    const registrar = run('node-driver-registrar.js', ['--bogus=1']);
    assert.equal(await registrar.exit, 2);
    assert.match(registrar.output(), /node-driver-registrar stand-in: unknown flag "--bogus=1"/);
    const probe = run('livenessprobe.js', ['--health-port=9808']);
    assert.equal(await probe.exit, 2);
    assert.match(probe.output(), /livenessprobe stand-in: unknown flag "--health-port=9808"/);
  });

  test('registrar: says it is a stand-in, exits 1 when kubelet reports failure', () =>
    withRegistrarCli(async (registrar, regSocket) => {
      assert.match(registrar.output().split('\n')[0] ?? '', /stand-in/);
      await asKubelet(regSocket, (kubelet) => assert.rejects(call(kubelet, 'NotifyRegistrationStatus', { plugin_registered: false, error: 'x' })));
      assert.equal(await registrar.exit, 1);
      assert.match(registrar.output(), /Registration process failed.*err="x"/);
    }));

  test('registrar: SIGTERM removes the registration socket and exits 0', () =>
    withRegistrarCli(async (registrar, regSocket) => {
      registrar.child.kill('SIGTERM');
      assert.equal(await registrar.exit, 0);
      assert.equal(await exists(regSocket), false);
    }));

  test('livenessprobe: SIGTERM exits 0', async () => {
    const probe = run('livenessprobe.js', [`--csi-address=${driver.identity.socketPath}`, '--http-endpoint=:0', '--v=2']);
    try {
      await eventually('the stand-in to listen', () => /ServeMux listening/.test(probe.output()));
      assert.match(probe.output().split('\n')[0] ?? '', /stand-in/);
      probe.child.kill('SIGTERM');
      assert.equal(await probe.exit, 0);
    } finally {
      probe.child.kill('SIGKILL');
    }
  });
});
