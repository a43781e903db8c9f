/**
 * Everything an integration test needs: a scratch directory, the development
 * SPIRE agent on a Unix socket, the driver (in this process, or as a real child
 * process for kill -9 tests), and a kubelet simulator on the CSI socket.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Config } from '../../src/config.js';
import { startDriver, type RunningDriver, type StartDriverOptions } from '../../src/driver.js';
import { mountsUnder } from '../../src/fs/mountinfo.js';
import { unmount } from '../../src/fs/tmpfs.js';
import { createLogger } from '../../src/observability/logger.js';
import { DriverMetrics } from '../../src/observability/metrics.js';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { DevAgent, type DevAgentOptions } from './dev-agent/dev-agent.js';
import { KubeletSimulator } from './kubelet-simulator.js';
import { makeScratchDir, removeScratchDir } from './scratch.js';

export const NODE_NAME = 'node-a';

/** The V8 flags the image runs the driver with (the Dockerfile's ENTRYPOINT); child-process drivers use them too. */
export const DRIVER_NODE_FLAGS = ['--max-semi-space-size=1', '--optimize-for-size', '--jitless', '--no-expose-wasm', '--expose-gc'];

export function runningAsRoot(): boolean {
  return process.getuid?.() === 0;
}

export interface HarnessOptions {
  useTmpfs?: boolean;
  publishTimeoutMs?: number;
  agent?: Omit<DevAgentOptions, 'socketPath'>;
  /** Start the driver as a child process (node dist/src/main.js) instead of in this process. */
  driverProcess?: boolean;
  /** The in-process driver's C library binding for mounts (default: koffi's). */
  loadLibcForMounts?: StartDriverOptions['loadLibcForMounts'];
  /** Default debug, for the tests' assertions on log lines; the benchmarks measure the driver at its default, info. */
  logLevel?: Config['logLevel'];
  /** --metrics-address (default none, as in the chart). */
  metricsAddress?: Config['metricsAddress'];
}

/** Captured JSON log lines of the in-process driver. */
export class LogCapture {
  readonly lines: string[] = [];
  write(chunk: string): void {
    this.lines.push(...chunk.split('\n').filter((line) => line.length > 0));
  }
  text(): string {
    return this.lines.join('\n');
  }
  entries(): Record<string, unknown>[] {
    return this.lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  }
}

export class Harness {
  driver: RunningDriver | undefined;
  child: DriverProcess | undefined;
  readonly logs = new LogCapture();
  readonly metrics = new DriverMetrics();

  private constructor(
    readonly dir: string,
    readonly agent: DevAgent,
    readonly config: Config,
    readonly kubelet: KubeletSimulator,
    private readonly options: HarnessOptions,
  ) {}

  static async start(options: HarnessOptions = {}): Promise<Harness> {
    const dir = await makeScratchDir('it');
    const config: Config = {
      csiSocketPath: path.join(dir, 'plugin', 'csi.sock'),
      nodeName: NODE_NAME,
      driverName: 'csi.spire.io',
      agentAdminSocketPath: path.join(dir, 'agent', 'admin.sock'),
      stateDir: path.join(dir, 'state'),
      kubeletRootDir: path.join(dir, 'kubelet'),
      publishTimeoutMs: options.publishTimeoutMs ?? 10_000,
      useTmpfs: options.useTmpfs ?? false,
      tmpfsSizeBytes: 1024 * 1024,
      logLevel: options.logLevel ?? 'debug',
      metricsAddress: options.metricsAddress,
      maxReceiveMessageBytes: 32 * 1024 * 1024,
    };
    const agent = await DevAgent.start({ socketPath: config.agentAdminSocketPath, ...options.agent });
    const kubelet = new KubeletSimulator({ csiSocketPath: config.csiSocketPath, kubeletRootDir: config.kubeletRootDir });
    const harness = new Harness(dir, agent, config, kubelet, options);
    await harness.startDriver();
    return harness;
  }

  async startDriver(): Promise<void> {
    if (this.options.driverProcess) {
      this.child = await DriverProcess.start(this.config);
      await this.waitUntilReady();
    } else {
      const logger = createLogger({ level: this.config.logLevel, destination: this.logs });
      this.driver = await startDriver(this.config, {
        logger,
        metrics: this.metrics,
        ...(this.options.loadLibcForMounts && { loadLibcForMounts: this.options.loadLibcForMounts }),
      });
    }
  }

  async stopDriver(): Promise<void> {
    await this.driver?.stop();
    this.driver = undefined;
    await this.child?.stop('SIGTERM');
    this.child = undefined;
  }

  async killDriver(): Promise<void> {
    await this.child?.stop('SIGKILL');
    this.child = undefined;
  }

  async waitUntilReady(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await this.kubelet.probeReady()) return;
      if (Date.now() > deadline) throw new Error(`driver not ready after ${timeoutMs} ms; logs:\n${this.child?.output() ?? this.logs.text()}`);
      await sleep(50);
    }
  }

  async close(): Promise<void> {
    await this.stopDriver();
    this.kubelet.close();
    await this.agent.close();
    // Volumes a test deliberately left in place (restart tests) keep their tmpfs.
    for (const mount of (await mountsUnder(this.dir)).reverse()) await unmount(mount.mountPoint);
    await removeScratchDir(this.dir);
  }
}

export class DriverProcess {
  private readonly chunks: string[] = [];

  private constructor(readonly process: ChildProcess) {
    process.stdout?.on('data', (chunk: Buffer) => this.chunks.push(chunk.toString()));
    process.stderr?.on('data', (chunk: Buffer) => this.chunks.push(chunk.toString()));
  }

  static async start(config: Config): Promise<DriverProcess> {
    const args = [
      ...DRIVER_NODE_FLAGS,
      path.join(PACKAGE_ROOT, 'dist', 'src', 'main.js'),
      `--endpoint=unix://${config.csiSocketPath}`,
      `--node-name=${config.nodeName}`,
      `--admin-socket=${config.agentAdminSocketPath}`,
      `--state-dir=${config.stateDir}`,
      `--kubelet-root-dir=${config.kubeletRootDir}`,
      `--publish-timeout=${config.publishTimeoutMs}ms`,
      `--tmpfs=${String(config.useTmpfs)}`,
      `--tmpfs-size=${config.tmpfsSizeBytes}`,
      `--log-level=${config.logLevel}`,
      ...(config.metricsAddress ? [`--metrics-address=${config.metricsAddress.host}:${config.metricsAddress.port}`] : []),
    ];
    return new DriverProcess(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  output(): string {
    return this.chunks.join('');
  }

  async stop(signal: NodeJS.Signals): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.process.once('exit', () => resolve()));
    this.process.kill(signal);
    await exited;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` until it holds; fails with `what` after the timeout. */
export async function eventually<T>(
  what: string,
  condition: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}
