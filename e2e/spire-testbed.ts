/**
 * A real SPIRE server and agent (v1.15.3, built by e2e/setup) on a scratch
 * directory, for the end-to-end tests: started from the templates in
 * e2e/spire/, attested with a join token, with the driver registered as a
 * delegate, and helpers to create and delete workload entries the two ways
 * users do (spire-controller-manager style: k8s:pod-uid only; hand-made:
 * k8s:ns + k8s:sa), to stop and start the agent, and to tear everything down.
 *
 * Every process runs in its own process group and is killed with its group on
 * close() — and, should the test process die without running its `after`
 * hooks, from a process 'exit' handler.
 *
 * This file is the entry point the tests import; the parts live in e2e/testbed/,
 * one job a module: tools.ts (finding the binaries), processes.ts (tool
 * processes, cleanup at exit), spire-config.ts (identities, layout, rendered
 * config files), cli.ts (spire-server entry and bundle commands, health checks)
 * and waits.ts (sleep, waitFor, a free port).
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type { X509Certificate } from 'node:crypto';
import { makeScratchDir, removeScratchDir } from '../test/support/scratch.js';
import { commandSucceeds, SpireServerCli, type EntrySpec, type PodLike } from './testbed/cli.js';
import { ToolProcess, unmountAllUnder, unmountOnExit } from './testbed/processes.js';
import { DRIVER_SPIFFE_ID, NODE_SPIFFE_ID, renderSpireConfigs, testbedLayout, type DelegateSetup } from './testbed/spire-config.js';
import { locateTools, type E2eTools } from './testbed/tools.js';
import { freeTcpPort, waitFor } from './testbed/waits.js';

export { splitPem, type EntrySpec, type PodLike } from './testbed/cli.js';
export { killOnExit, ToolProcess, unmountAllUnder, unmountOnExit } from './testbed/processes.js';
export { DRIVER_SPIFFE_ID, NODE_SPIFFE_ID, TEMPLATE_DIR, TRUST_DOMAIN, type DelegateSetup } from './testbed/spire-config.js';
export { locateTools, SETUP_SCRIPT, type E2eTools } from './testbed/tools.js';
export { freeTcpPort, sleep, waitFor } from './testbed/waits.js';
export { SecondSpireServer } from './testbed/second-server.js';

export interface SpireTestbedOptions {
  /** Scratch dir label. */
  label?: string;
  /** server ca_ttl; template default "1h". */
  caTtl?: string;
  /** server default_x509_svid_ttl; template default "10m". Also the agent's own SVID TTL. */
  defaultX509SvidTtl?: string;
  /** server default_jwt_svid_ttl; template default "5m". */
  defaultJwtSvidTtl?: string;
  delegate?: DelegateSetup;
  /** How long to wait for each start-up step. Default 30 s. */
  startTimeoutMs?: number;
}

export class SpireTestbed {
  server: ToolProcess | undefined;
  agent: ToolProcess | undefined;
  readonly serverSocketPath: string;
  readonly workloadSocketPath: string;
  readonly adminSocketPath: string;
  readonly serverConfPath: string;
  readonly agentConfPath: string;
  /** Start-up timings, for reports. */
  readonly timings: Record<string, number> = {};
  private readonly layout: ReturnType<typeof testbedLayout>;
  private readonly cli: SpireServerCli;
  private readonly env: NodeJS.ProcessEnv;
  private agentStarts = 0;
  private releaseMounts: () => void = () => undefined;

  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly tools: E2eTools,
    readonly options: Required<Omit<SpireTestbedOptions, 'label'>>,
  ) {
    this.layout = testbedLayout(dir);
    this.serverSocketPath = this.layout.serverSocketPath;
    this.workloadSocketPath = this.layout.workloadSocketPath;
    this.adminSocketPath = this.layout.adminSocketPath;
    this.serverConfPath = this.layout.serverConfPath;
    this.agentConfPath = this.layout.agentConfPath;
    this.cli = new SpireServerCli(tools.spireServer, this.serverSocketPath, dir);
    this.env = { ...process.env, D: dir, SPIRE_SERVER_PORT: String(port) };
  }

  /**
   * Starts server and agent and (unless told otherwise) registers the driver
   * as a delegate and waits until the agent has its entry. On any failure
   * everything started so far is torn down before the error propagates.
   */
  static async start(options: SpireTestbedOptions = {}): Promise<SpireTestbed> {
    const tools = locateTools();
    const dir = await makeScratchDir(options.label ?? 'e2e');
    // sun_path holds 107 bytes plus the NUL.
    const longest = testbedLayout(dir).adminSocketPath;
    if (Buffer.byteLength(longest) > 107) {
      await removeScratchDir(dir);
      throw new Error(`scratch dir ${dir} is too long for Unix socket paths (${longest}); set SPIRE_CSI_SCRATCH to a shorter directory`);
    }
    const testbed = new SpireTestbed(dir, await freeTcpPort(), tools, {
      caTtl: options.caTtl ?? '1h',
      defaultX509SvidTtl: options.defaultX509SvidTtl ?? '10m',
      defaultJwtSvidTtl: options.defaultJwtSvidTtl ?? '5m',
      delegate: options.delegate ?? 'registered',
      startTimeoutMs: options.startTimeoutMs ?? 30_000,
    });
    testbed.releaseMounts = unmountOnExit(dir);
    try {
      await testbed.bringUp();
    } catch (err) {
      const logs = testbed.diagnostics();
      await testbed.close();
      throw new Error(`starting SPIRE failed: ${(err as Error).message}\n${logs}`, { cause: err });
    }
    return testbed;
  }

  private async bringUp(): Promise<void> {
    await fsp.mkdir(this.layout.serverDataDir, { recursive: true });
    await fsp.mkdir(this.layout.agentDataDir, { recursive: true });
    await renderSpireConfigs(this.options, this.layout);

    let t0 = Date.now();
    this.server = ToolProcess.start('spire-server', this.tools.spireServer, ['run', '-config', this.serverConfPath, '-expandEnv'], {
      env: this.env,
      logFile: this.layout.serverLogPath,
    });
    await this.waitUntil('spire-server healthcheck', this.server, () =>
      commandSucceeds(this.tools.spireServer, ['healthcheck', '-socketPath', this.serverSocketPath]),
    );
    this.timings['server_healthy_ms'] = Date.now() - t0;

    const { stdout } = await this.serverCli(['token', 'generate', '-spiffeID', NODE_SPIFFE_ID, '-ttl', '600']);
    const token = /^Token:\s*(\S+)/m.exec(stdout)?.[1];
    if (!token) throw new Error(`spire-server token generate printed no "Token:" line: ${stdout}`);

    t0 = Date.now();
    await this.startAgent({ joinToken: token });
    this.timings['agent_healthy_ms'] = Date.now() - t0;

    if (this.options.delegate !== 'no-entry') {
      t0 = Date.now();
      await this.createEntry({ spiffeId: DRIVER_SPIFFE_ID, selectors: [`unix:uid:${process.getuid?.() ?? 0}`] });
      // The test process has the driver's uid, so when the Workload API hands
      // us the delegate's SVID the agent has synced the entry.
      await this.waitUntil('the delegate entry to reach the agent', this.agent, () =>
        commandSucceeds(this.tools.spireAgent, ['api', 'fetch', 'x509', '-socketPath', this.workloadSocketPath, '-timeout', '1s', '-silent']),
      );
      this.timings['delegate_entry_synced_ms'] = Date.now() - t0;
    }
  }

  /** Starts the agent (again) on the same data dir; no join token is needed after the first start (KeyManager "disk"). */
  async startAgent(options: { joinToken?: string } = {}): Promise<void> {
    if (this.agent?.running) throw new Error('the agent is already running');
    this.agentStarts += 1;
    const args = ['run', '-config', this.agentConfPath, '-expandEnv'];
    if (options.joinToken) args.push('-joinToken', options.joinToken);
    this.agent = ToolProcess.start('spire-agent', this.tools.spireAgent, args, {
      env: this.env,
      logFile: this.layout.agentLogPath,
    });
    await this.waitUntil('spire-agent healthcheck', this.agent, () =>
      commandSucceeds(this.tools.spireAgent, ['healthcheck', '-socketPath', this.workloadSocketPath]),
    );
    await this.waitUntil('the agent admin socket', this.agent, () => fs.existsSync(this.adminSocketPath));
  }

  /** Stops the agent (SIGTERM, or SIGKILL for a crash); its data dir stays for startAgent(). */
  async stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.agent?.stop(signal);
  }

  // ---------------------------------------------- spire-server (cli.ts)

  /** `spire-server entry create`; returns the entry id. */
  createEntry(spec: EntrySpec): Promise<string> {
    return this.cli.createEntry(spec);
  }

  /** Many entries in one `entry create -data` call (one CLI process instead of one per entry). */
  createEntries(specs: EntrySpec[]): Promise<string[]> {
    return this.cli.createEntries(specs);
  }

  /** The entry spire-controller-manager writes for a pod: `k8s:pod-uid:<uid>` only. */
  createPodUidEntry(pod: PodLike, spiffeId: string, options: { x509SvidTtlSeconds?: number } = {}): Promise<string> {
    return this.cli.createPodUidEntry(pod, spiffeId, options);
  }

  /** The entry an operator writes by hand: `k8s:ns:<ns>` + `k8s:sa:<sa>`. */
  createNamespaceServiceAccountEntry(pod: PodLike, spiffeId: string, options: { x509SvidTtlSeconds?: number } = {}): Promise<string> {
    return this.cli.createNamespaceServiceAccountEntry(pod, spiffeId, options);
  }

  deleteEntry(entryId: string): Promise<void> {
    return this.cli.deleteEntry(entryId);
  }

  /** The server's current X.509 trust bundle of its own trust domain. */
  serverBundle(): Promise<X509Certificate[]> {
    return this.cli.bundle();
  }

  /** The own trust domain's bundle as a SPIFFE bundle document, for another server's `bundle set -format spiffe`. */
  spiffeBundle(): Promise<string> {
    return this.cli.spiffeBundle();
  }

  /** Federates the server with `trustDomainId` (`spiffe://<td>`), whose SPIFFE bundle document is `spiffeBundle`. */
  setFederatedBundle(trustDomainId: string, spiffeBundle: string): Promise<void> {
    return this.cli.setFederatedBundle(trustDomainId, spiffeBundle);
  }

  /** `spire-server localauthority x509 show -output json`, parsed. */
  localX509Authorities(): Promise<unknown> {
    return this.cli.localX509Authorities();
  }

  serverCli(args: string[]): Promise<{ stdout: string; stderr: string }> {
    return this.cli.run(args);
  }

  // ------------------------------------------------------------ teardown

  /** Last lines of the server and agent logs, for failure messages. */
  diagnostics(lines = 25): string {
    const parts: string[] = [];
    for (const proc of [this.server, this.agent]) {
      if (proc) parts.push(`--- last lines of ${proc.logFile}:\n${proc.logTail(lines)}`);
    }
    return parts.join('\n');
  }

  /** Kills agent and server (process groups), unmounts anything left below the scratch dir, removes it. */
  async close(): Promise<void> {
    await this.agent?.stop('SIGTERM', 3000);
    await this.server?.stop('SIGTERM', 3000);
    await unmountAllUnder(this.dir);
    if (process.env['KEEP_SCRATCH'] === '1') {
      process.stderr.write(`e2e: scratch dir kept: ${this.dir}\n`);
    } else {
      await removeScratchDir(this.dir);
    }
    this.releaseMounts();
  }

  private async waitUntil(what: string, proc: ToolProcess | undefined, check: () => Promise<boolean> | boolean): Promise<void> {
    await waitFor(
      what,
      async () => {
        if (proc && !proc.running) throw new Error(`${proc.name} exited:\n${proc.logTail()}`);
        return check();
      },
      { timeoutMs: this.options.startTimeoutMs, intervalMs: 50 },
    );
  }
}
