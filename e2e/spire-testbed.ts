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
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { PACKAGE_ROOT } from '../src/proto-loading.js';
import { makeScratchDir, removeScratchDir } from '../test/support/scratch.js';
import { mountsUnder } from '../src/fs/mountinfo.js';
import { unmount } from '../src/fs/tmpfs.js';
import { isExecutable, pinnedToolPath } from '../test/support/tools.js';

const execFileAsync = promisify(execFile);

export const TRUST_DOMAIN = 'example.org';
export const NODE_SPIFFE_ID = `spiffe://${TRUST_DOMAIN}/node`;
export const DRIVER_SPIFFE_ID = `spiffe://${TRUST_DOMAIN}/csi-driver`;
export const TEMPLATE_DIR = path.join(PACKAGE_ROOT, 'e2e', 'spire');
export const SETUP_SCRIPT = path.join(PACKAGE_ROOT, 'e2e', 'setup');

// ------------------------------------------------------------------- tools

export interface E2eTools {
  spireServer: string;
  spireAgent: string;
  csiSanity: string;
}

const TOOL_ENV = { spireServer: 'SPIRE_SERVER_BIN', spireAgent: 'SPIRE_AGENT_BIN', csiSanity: 'CSI_SANITY_BIN' } as const;
const TOOL_NAME = { spireServer: 'spire-server', spireAgent: 'spire-agent', csiSanity: 'csi-sanity' } as const;

/** The pinned versions, read from e2e/setup so the two can never disagree. */
function pinnedVersions(): { spire: string; csiSanity: string } {
  const script = fs.readFileSync(SETUP_SCRIPT, 'utf8');
  const read = (name: string): string => {
    const match = new RegExp(`^${name}=(\\S+)$`, 'm').exec(script);
    if (!match?.[1]) throw new Error(`${SETUP_SCRIPT} no longer sets ${name}=…; update e2e/spire-testbed.ts`);
    return match[1];
  };
  return { spire: read('SPIRE_VERSION'), csiSanity: read('CSI_SANITY_VERSION') };
}


/**
 * Where the real tools are: $SPIRE_SERVER_BIN / $SPIRE_AGENT_BIN / $CSI_SANITY_BIN,
 * else the pinned builds e2e/setup installs. Never skips: a missing binary is a
 * failure that names the command to run.
 */
export function locateTools(env: NodeJS.ProcessEnv = process.env): E2eTools {
  const versions = pinnedVersions();
  const found: Partial<E2eTools> = {};
  const problems: string[] = [];
  for (const key of Object.keys(TOOL_ENV) as (keyof E2eTools)[]) {
    const fromEnv = env[TOOL_ENV[key]];
    const name = TOOL_NAME[key];
    const version = key === 'csiSanity' ? versions.csiSanity : versions.spire;
    const candidate = fromEnv !== undefined && fromEnv !== '' ? fromEnv : pinnedToolPath(name, version, env);
    if (isExecutable(candidate)) found[key] = candidate;
    else problems.push(`${name} ${version}: ${candidate} is missing or not executable${fromEnv ? ` (from $${TOOL_ENV[key]})` : ''}`);
  }
  if (problems.length > 0) {
    throw new Error(
      `the end-to-end tests need the real tools, and some are missing:\n  ${problems.join('\n  ')}\n` +
        `Build them with:  bash ${path.relative(process.cwd(), SETUP_SCRIPT) || SETUP_SCRIPT}\n` +
        '(needs Go >= 1.26.6 and gcc; ~9 minutes cold, instant afterwards), or set SPIRE_SERVER_BIN, SPIRE_AGENT_BIN and CSI_SANITY_BIN.',
    );
  }
  return found as E2eTools;
}

// --------------------------------------------------- processes and cleanup

/** pids of process groups (and plain pids) that must not outlive this process. */
const liveGroups = new Set<number>();
const livePids = new Set<number>();
const mountRoots = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when the test process dies without running its `after` hooks.
  process.on('exit', () => {
    for (const pgid of liveGroups) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const pid of livePids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const root of mountRoots) {
      unmountAllUnderSync(root);
      if (process.env['KEEP_SCRATCH'] !== '1' && !stillMounted(root)) fs.rmSync(root, { recursive: true, force: true });
    }
  });
  // A signal would end the process without 'exit'; turn it into an exit so the
  // hook above runs (the SPIRE processes live in their own process groups and
  // would not get the terminal's Ctrl-C).
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(signal, () => process.exit(code));
  }
}

/** Keeps `pid` from outliving the test process (for children not started here, e.g. the driver). */
export function killOnExit(pid: number | undefined): () => void {
  if (pid === undefined) return () => undefined;
  installExitHook();
  livePids.add(pid);
  return () => {
    livePids.delete(pid);
  };
}

/** Unmounts whatever a crashed test left mounted under `root` when the test process exits. */
export function unmountOnExit(root: string): () => void {
  installExitHook();
  mountRoots.add(root);
  return () => {
    mountRoots.delete(root);
  };
}

function mountPointsUnderSync(root: string): string[] {
  let mountinfo: string;
  try {
    mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  return mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((p): p is string => p !== undefined && (p === root || p.startsWith(root + '/')));
}

function stillMounted(root: string): boolean {
  return mountPointsUnderSync(root).length > 0;
}

function unmountAllUnderSync(root: string): void {
  for (const point of mountPointsUnderSync(root).reverse()) spawnSync('umount', [point], { stdio: 'ignore' });
}

/** Unmounts (deepest first) everything mounted at or below `root`. */
export async function unmountAllUnder(root: string): Promise<void> {
  for (const mount of (await mountsUnder(root)).reverse()) {
    await unmount(mount.mountPoint).catch(() => undefined);
  }
}

/** A long-running tool in its own process group, logging to a file. */
export class ToolProcess {
  private exitPromise: Promise<void>;
  private exited = false;

  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', () => {
        this.exited = true;
        if (child.pid !== undefined) liveGroups.delete(child.pid);
        resolve();
      });
      child.once('error', () => {
        this.exited = true;
        resolve();
      });
    });
  }

  static start(name: string, command: string, args: string[], options: { env?: NodeJS.ProcessEnv; logFile: string }): ToolProcess {
    installExitHook();
    const log = fs.openSync(options.logFile, 'a');
    try {
      // detached: its own process group, so the whole group can be killed.
      const child = spawn(command, args, { env: options.env ?? process.env, stdio: ['ignore', log, log], detached: true });
      if (child.pid !== undefined) liveGroups.add(child.pid);
      return new ToolProcess(name, child, options.logFile);
    } finally {
      fs.closeSync(log);
    }
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Signals the process group and waits for the leader to exit; SIGKILL after `graceMs`. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
    const pid = this.child.pid;
    if (this.exited || pid === undefined) return;
    signalGroup(pid, signal);
    const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), graceMs);
    await this.exitPromise;
    clearTimeout(timer);
    // Anything else left in the group.
    signalGroup(pid, 'SIGKILL');
  }

  logTail(lines = 30): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // the group is gone
  }
}

// ----------------------------------------------------------------- helpers

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` every `intervalMs` until it holds; fails with `what` (and `diagnostics()`) after the timeout. */
export async function waitFor<T>(
  what: string,
  condition: () => Promise<T | undefined | false> | T | undefined | false,
  options: { timeoutMs: number; intervalMs?: number; diagnostics?: () => string | Promise<string> },
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = lastError === undefined ? '' : ` (last error: ${(lastError as Error).message ?? String(lastError)})`;
      const diagnostics = options.diagnostics ? `\n${await Promise.resolve(options.diagnostics()).catch((e: unknown) => String(e))}` : '';
      throw new Error(`timed out after ${options.timeoutMs} ms waiting for ${what}${detail}${diagnostics}`);
    }
    await sleep(options.intervalMs ?? 100);
  }
}

async function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** Replaces one `key = "value"` line of an HCL template; throws if the template no longer has it. */
function setHclString(text: string, key: string, value: string, file: string): string {
  const pattern = new RegExp(`^(\\s*${key}\\s*=\\s*)"[^"]*"`, 'm');
  if (!pattern.test(text)) throw new Error(`${file} has no \`${key} = "…"\` line; update e2e/spire-testbed.ts`);
  return text.replace(pattern, `$1"${value}"`);
}

function setHclList(text: string, key: string, values: string[], file: string): string {
  const pattern = new RegExp(`^(\\s*${key}\\s*=\\s*)\\[[^\\]]*\\]`, 'm');
  if (!pattern.test(text)) throw new Error(`${file} has no \`${key} = [ … ]\` line; update e2e/spire-testbed.ts`);
  return text.replace(pattern, `$1[${values.map((v) => JSON.stringify(v)).join(', ')}]`);
}

// ----------------------------------------------------------------- testbed

export type DelegateSetup =
  /** The driver's entry exists and its SPIFFE ID is in authorized_delegates (the working setup). */
  | 'registered'
  /** No entry for the driver (unix:uid:<our uid>) at all. */
  | 'no-entry'
  /** The driver has an entry, but authorized_delegates lists another SPIFFE ID. */
  | 'not-authorized';

export interface SpireTestbedOptions {
  /** Scratch dir label. */
  label?: string;
  /** server ca_ttl; template default "1h". */
  caTtl?: string;
  /** server default_x509_svid_ttl; template default "10m". Also the agent's own SVID TTL. */
  defaultX509SvidTtl?: string;
  delegate?: DelegateSetup;
  /** How long to wait for each start-up step. Default 30 s. */
  startTimeoutMs?: number;
}

export interface EntrySpec {
  spiffeId: string;
  /** `type:value` strings, split at the first colon by the CLI. */
  selectors: string[];
  /** -x509SVIDTTL in seconds; 0/undefined = the server's default_x509_svid_ttl. */
  x509SvidTtlSeconds?: number;
  hint?: string;
  parentId?: string;
}

export interface PodLike {
  uid: string;
  namespace: string;
  serviceAccount: string;
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
  private readonly env: NodeJS.ProcessEnv;
  private agentStarts = 0;
  private releaseMounts: () => void = () => undefined;

  private constructor(
    readonly dir: string,
    readonly port: number,
    readonly tools: E2eTools,
    readonly options: Required<Omit<SpireTestbedOptions, 'label'>>,
  ) {
    this.serverSocketPath = path.join(dir, 'server', 'api.sock');
    this.workloadSocketPath = path.join(dir, 'agent', 'public', 'api.sock');
    this.adminSocketPath = path.join(dir, 'agent', 'admin', 'admin.sock');
    this.serverConfPath = path.join(dir, 'server.conf');
    this.agentConfPath = path.join(dir, 'agent.conf');
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
    const longest = path.join(dir, 'agent', 'admin', 'admin.sock');
    if (Buffer.byteLength(longest) > 107) {
      await removeScratchDir(dir);
      throw new Error(`scratch dir ${dir} is too long for Unix socket paths (${longest}); set SPIRE_CSI_SCRATCH to a shorter directory`);
    }
    const testbed = new SpireTestbed(dir, await freeTcpPort(), tools, {
      caTtl: options.caTtl ?? '1h',
      defaultX509SvidTtl: options.defaultX509SvidTtl ?? '10m',
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
    await fsp.mkdir(path.join(this.dir, 'server', 'data'), { recursive: true });
    await fsp.mkdir(path.join(this.dir, 'agent', 'data'), { recursive: true });
    await this.renderConfigs();

    let t0 = Date.now();
    this.server = ToolProcess.start('spire-server', this.tools.spireServer, ['run', '-config', this.serverConfPath, '-expandEnv'], {
      env: this.env,
      logFile: path.join(this.dir, 'server.log'),
    });
    await this.waitUntil('spire-server healthcheck', this.server, () =>
      this.succeeds(this.tools.spireServer, ['healthcheck', '-socketPath', this.serverSocketPath]),
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
        this.succeeds(this.tools.spireAgent, ['api', 'fetch', 'x509', '-socketPath', this.workloadSocketPath, '-timeout', '1s', '-silent']),
      );
      this.timings['delegate_entry_synced_ms'] = Date.now() - t0;
    }
  }

  private async renderConfigs(): Promise<void> {
    const serverTemplate = path.join(TEMPLATE_DIR, 'server.conf');
    const agentTemplate = path.join(TEMPLATE_DIR, 'agent.conf');
    let server = await fsp.readFile(serverTemplate, 'utf8');
    server = setHclString(server, 'ca_ttl', this.options.caTtl, serverTemplate);
    server = setHclString(server, 'default_x509_svid_ttl', this.options.defaultX509SvidTtl, serverTemplate);
    let agent = await fsp.readFile(agentTemplate, 'utf8');
    if (this.options.delegate === 'not-authorized') {
      agent = setHclList(agent, 'authorized_delegates', [`spiffe://${TRUST_DOMAIN}/someone-else`], agentTemplate);
    }
    await fsp.writeFile(this.serverConfPath, server);
    await fsp.writeFile(this.agentConfPath, agent);
  }

  /** Starts the agent (again) on the same data dir; no join token is needed after the first start (KeyManager "disk"). */
  async startAgent(options: { joinToken?: string } = {}): Promise<void> {
    if (this.agent?.running) throw new Error('the agent is already running');
    this.agentStarts += 1;
    const args = ['run', '-config', this.agentConfPath, '-expandEnv'];
    if (options.joinToken) args.push('-joinToken', options.joinToken);
    this.agent = ToolProcess.start('spire-agent', this.tools.spireAgent, args, {
      env: this.env,
      logFile: path.join(this.dir, 'agent.log'),
    });
    await this.waitUntil('spire-agent healthcheck', this.agent, () =>
      this.succeeds(this.tools.spireAgent, ['healthcheck', '-socketPath', this.workloadSocketPath]),
    );
    await this.waitUntil('the agent admin socket', this.agent, () => fs.existsSync(this.adminSocketPath));
  }

  /** Stops the agent (SIGTERM, or SIGKILL for a crash); its data dir stays for startAgent(). */
  async stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.agent?.stop(signal);
  }

  /** `spire-server entry create`; returns the entry id. */
  async createEntry(spec: EntrySpec): Promise<string> {
    const args = ['entry', 'create', '-parentID', spec.parentId ?? NODE_SPIFFE_ID, '-spiffeID', spec.spiffeId, '-output', 'json'];
    for (const selector of spec.selectors) args.push('-selector', selector);
    if (spec.x509SvidTtlSeconds) args.push('-x509SVIDTTL', String(spec.x509SvidTtlSeconds));
    if (spec.hint) args.push('-hint', spec.hint);
    const { stdout } = await this.serverCli(args);
    const ids = entryIdsFromJson(stdout);
    if (ids.length !== 1) throw new Error(`entry create did not report one created entry: ${stdout}`);
    return ids[0] as string;
  }

  /** Many entries in one `entry create -data` call (one CLI process instead of one per entry). */
  async createEntries(specs: EntrySpec[]): Promise<string[]> {
    const file = path.join(this.dir, `entries-${Date.now()}.json`);
    const entries = specs.map((spec) => ({
      spiffe_id: spec.spiffeId,
      parent_id: spec.parentId ?? NODE_SPIFFE_ID,
      selectors: spec.selectors.map((s) => {
        const colon = s.indexOf(':');
        return { type: s.slice(0, colon), value: s.slice(colon + 1) };
      }),
      ...(spec.x509SvidTtlSeconds ? { x509_svid_ttl: spec.x509SvidTtlSeconds } : {}),
      ...(spec.hint ? { hint: spec.hint } : {}),
    }));
    await fsp.writeFile(file, JSON.stringify({ entries }));
    const { stdout } = await this.serverCli(['entry', 'create', '-data', file, '-output', 'json']);
    const ids = entryIdsFromJson(stdout);
    if (ids.length !== specs.length) throw new Error(`entry create -data created ${ids.length} of ${specs.length} entries: ${stdout.slice(0, 2000)}`);
    return ids;
  }

  /** The entry spire-controller-manager writes for a pod: `k8s:pod-uid:<uid>` only. */
  createPodUidEntry(pod: PodLike, spiffeId: string, options: { x509SvidTtlSeconds?: number } = {}): Promise<string> {
    return this.createEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`], ...options });
  }

  /** The entry an operator writes by hand: `k8s:ns:<ns>` + `k8s:sa:<sa>`. */
  createNamespaceServiceAccountEntry(pod: PodLike, spiffeId: string, options: { x509SvidTtlSeconds?: number } = {}): Promise<string> {
    return this.createEntry({ spiffeId, selectors: [`k8s:ns:${pod.namespace}`, `k8s:sa:${pod.serviceAccount}`], ...options });
  }

  async deleteEntry(entryId: string): Promise<void> {
    await this.serverCli(['entry', 'delete', '-entryID', entryId]);
  }

  /** The server's current X.509 trust bundle of its own trust domain. */
  async serverBundle(): Promise<X509Certificate[]> {
    const { stdout } = await this.serverCli(['bundle', 'show', '-format', 'pem']);
    return splitPem(stdout).map((pem) => new X509Certificate(pem));
  }

  /** `spire-server localauthority x509 show -output json`, parsed. */
  async localX509Authorities(): Promise<unknown> {
    const { stdout } = await this.serverCli(['localauthority', 'x509', 'show', '-output', 'json']);
    return JSON.parse(stdout) as unknown;
  }

  async serverCli(args: string[]): Promise<{ stdout: string; stderr: string }> {
    try {
      return await execFileAsync(this.tools.spireServer, [...args, '-socketPath', this.serverSocketPath], { encoding: 'utf8', timeout: 30_000 });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message: string };
      throw new Error(`spire-server ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`, { cause: err });
    }
  }

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

  private async succeeds(command: string, args: string[]): Promise<boolean> {
    try {
      await execFileAsync(command, args, { timeout: 10_000 });
      return true;
    } catch {
      return false;
    }
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

function entryIdsFromJson(stdout: string): string[] {
  const parsed = JSON.parse(stdout) as { results?: { status?: { code?: number; message?: string }; entry?: { id?: string } }[] };
  const ids: string[] = [];
  for (const result of parsed.results ?? []) {
    if ((result.status?.code ?? 0) !== 0) throw new Error(`entry create failed: ${JSON.stringify(result.status)}`);
    if (result.entry?.id) ids.push(result.entry.id);
  }
  return ids;
}

export function splitPem(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) ?? [];
}
