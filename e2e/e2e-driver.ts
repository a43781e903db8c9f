/**
 * The driver as a real child process (node dist/src/main.js, via the
 * integration tests' DriverProcess) pointed at a real SPIRE agent's admin
 * socket, with the kubelet simulator on its CSI socket. As root the
 * per-volume tmpfs is on, as on a node.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../src/config.js';
import { DriverProcess, NODE_NAME, runningAsRoot } from '../test/support/driver-harness.js';
import { KubeletSimulator, type PublishedVolume } from '../test/support/kubelet-simulator.js';
import { pathExists } from '../test/support/volume-assertions.js';
import { isMountPoint } from '../src/fs/mountinfo.js';
import { killOnExit, sleep, unmountAllUnder } from './spire-testbed.js';

export interface DriverUnderTestOptions {
  /** Directory for the driver's sockets, state and kubelet root (e.g. `<testbed dir>/driver`). */
  dir: string;
  adminSocketPath: string;
  publishTimeoutMs?: number;
  logLevel?: Config['logLevel'];
}

export class DriverUnderTest {
  child: DriverProcess | undefined;
  readonly kubelet: KubeletSimulator;
  /** Output of every driver process this object started, in order. */
  private readonly previousOutput: string[] = [];
  private forgetPid: () => void = () => undefined;

  private constructor(readonly config: Config) {
    this.kubelet = new KubeletSimulator({ csiSocketPath: config.csiSocketPath, kubeletRootDir: config.kubeletRootDir });
  }

  static async start(options: DriverUnderTestOptions): Promise<DriverUnderTest> {
    if (!runningAsRoot()) {
      throw new Error('the end-to-end tests must run as root: the driver mounts a tmpfs per volume, as on a node');
    }
    await fs.mkdir(options.dir, { recursive: true });
    const config: Config = {
      csiSocketPath: path.join(options.dir, 'csi.sock'),
      nodeName: NODE_NAME,
      driverName: 'csi.spire.io',
      agentAdminSocketPath: options.adminSocketPath,
      stateDir: path.join(options.dir, 'state'),
      kubeletRootDir: path.join(options.dir, 'kubelet'),
      publishTimeoutMs: options.publishTimeoutMs ?? 30_000,
      useTmpfs: true,
      tmpfsSizeBytes: 1024 * 1024,
      logLevel: options.logLevel ?? 'debug',
      metricsAddress: undefined,
      maxReceiveMessageBytes: 32 * 1024 * 1024,
    };
    const driver = new DriverUnderTest(config);
    await driver.startProcess();
    return driver;
  }

  get volumesDir(): string {
    return path.join(this.config.stateDir, 'volumes');
  }

  /** Starts a (new) driver process and waits until Probe answers ready. */
  async startProcess(): Promise<void> {
    if (this.child) throw new Error('the driver is already running');
    this.child = await DriverProcess.start(this.config);
    this.forgetPid = killOnExit(this.child.process.pid);
    await this.waitUntilReady();
  }

  async stopProcess(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child) return;
    await child.stop(signal);
    this.previousOutput.push(child.output());
    this.child = undefined;
    this.forgetPid();
  }

  /** All driver log output so far (every process). */
  output(): string {
    return [...this.previousOutput, this.child?.output() ?? ''].join('');
  }

  /** The driver's JSON log lines, parsed (non-JSON lines are skipped). */
  logEntries(): Record<string, unknown>[] {
    const entries: Record<string, unknown>[] = [];
    for (const line of this.output().split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        entries.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a partial line
      }
    }
    return entries;
  }

  outputTail(lines = 40): string {
    return `--- last ${lines} lines of the driver output:\n${this.output().trimEnd().split('\n').slice(-lines).join('\n')}`;
  }

  async waitUntilReady(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (await this.kubelet.probeReady()) return;
      const child = this.child?.process;
      if (child && (child.exitCode !== null || child.signalCode !== null)) {
        throw new Error(`the driver exited (${child.exitCode ?? child.signalCode}) before it was ready\n${this.outputTail()}`);
      }
      if (Date.now() > deadline) throw new Error(`driver not ready after ${timeoutMs} ms\n${this.outputTail()}`);
      await sleep(50);
    }
  }

  /** docs/design.md invariant 3's cleanup: no target path, no metadata, no mount left for this volume. */
  async assertNothingLeft(volume: PublishedVolume): Promise<void> {
    assert.equal(await isMountPoint(volume.targetPath), false, `no mount left at ${volume.targetPath}`);
    assert.equal(await pathExists(volume.targetPath), false, `target path ${volume.targetPath} removed`);
    assert.equal(await pathExists(path.join(this.volumesDir, `${volume.volumeId}.json`)), false, 'no metadata record left');
  }

  async close(): Promise<void> {
    await this.stopProcess('SIGTERM');
    this.kubelet.close();
    await unmountAllUnder(path.dirname(this.config.csiSocketPath));
  }
}
