/**
 * Churn soak (hardening issue #8): many NodePublishVolume/NodeUnpublishVolume
 * cycles against one driver process, to show that nothing accumulates: RSS
 * levels off, and no mount, file descriptor, agent stream, timer or metadata
 * file is left behind. A script, not a test: it prints what it
 * measured (test/integration/churn-leaks.test.ts asserts the zero-leak part on
 * a smaller count).
 *
 *   node dist/bench/churn.js [--cycles 10000] [--concurrency 8] [--long-lived 20] [--real-agent]
 *
 * The driver runs as a child process (node dist/src/main.js with the image's
 * V8 flags, log level info, metrics on loopback), so its RSS and descriptors
 * are its own; it mounts a tmpfs per volume when this runs as root. The agent
 * is the development agent in this process, or with --real-agent a real SPIRE
 * server + agent (the e2e testbed; `bash e2e/setup` builds them). Like a node:
 * `--long-lived` volumes stay published all along (one rotates every
 * `--rotate-every` cycles; the real agent rotates them by TTL instead), while
 * `--concurrency` short-lived pods publish and unpublish at once, each with its
 * own k8s:pod-uid entry that is deleted after its pod. With the development
 * agent the CA also rotates every `--ca-rotate-every` cycles.
 *
 * RSS is compared settled against settled: after the warm-up cycles (first
 * 10 %), halfway and after the last one, the churn stops, the driver is left
 * idle for `--settle-ms` (the driver's own memory trimmer, src/memory-trimmer.ts,
 * runs 10 s into it, as on a node; nothing is forced from here) and RSS is the
 * median of five samples a second apart. Samples taken every second
 * while churning are reported too, with their least-squares trend: a leak
 * grows linearly with the cycles, a plateau does not. `--probe-heap` (a
 * diagnosis, not the soak: it changes the driver's flags) adds V8's heap after
 * two forced full GCs at each of those points.
 *
 * Pace: at most `--max-rate` cycles start per second (default 25, 0 for no
 * limit), far above any real node's pod churn. Faster, the development agent
 * drops the driver's connection: every unpublish cancels an SVID stream (an
 * HTTP/2 RST_STREAM), and Node's HTTP/2 server (nghttp2 1.61, in the
 * development agent's grpc-js) answers more than 1,000 of them in a burst, or
 * more than 33 per second sustained, with GOAWAY INTERNAL_ERROR, its
 * rapid-reset (CVE-2023-44487) protection. The driver then re-opens every
 * stream (26 warnings "Session closed with error code 2" in a 36 cycles/s run,
 * no failed cycle). SPIRE's agent is grpc-go, whose rapid-reset protection
 * limits concurrent handlers instead: 1,500 cycles at 35 per second against
 * it (--real-agent --max-rate 0) re-opened no stream.
 *
 * Streams: the development agent counts its open streams; the real agent
 * cannot be asked, so there only the SubscribeToX509SVIDs requests it logged
 * are counted (one per publish means no stream was re-opened), and the
 * driver's own figures (spire_csi_volumes, descriptors, active resources)
 * stand for the rest.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { mountsUnder } from '../src/fs/mountinfo.js';
import { PACKAGE_ROOT } from '../src/package-root.js';
import { agentSubscriptions, realAgentChurn } from '../e2e/churn-agent.js';
import { freeTcpPort, killOnExit, SpireTestbed, unmountAllUnder, unmountOnExit } from '../e2e/spire-testbed.js';
import {
  devAgentChurn,
  leftoverPodDirs,
  LongLivedVolumes,
  metadataFileNames,
  quantile,
  runChurn,
  stateFiles,
  type ChurnAgent,
  type ChurnFailure,
} from '../test/support/churn-workload.js';
import { DevAgent } from '../test/support/dev-agent/dev-agent.js';
import { DRIVER_NODE_FLAGS, NODE_NAME, runningAsRoot, sleep } from '../test/support/driver-harness.js';
import { KubeletSimulator } from '../test/support/kubelet-simulator.js';
import { makeScratchDir, removeScratchDir } from '../test/support/scratch.js';

// ------------------------------------------------------------------ options

const { values: flags } = parseArgs({
  options: {
    cycles: { type: 'string' },
    concurrency: { type: 'string', default: '8' },
    'long-lived': { type: 'string', default: '20' },
    'warmup-fraction': { type: 'string', default: '0.1' },
    'settle-ms': { type: 'string', default: '20000' },
    'rotate-every': { type: 'string', default: '25' },
    'ca-rotate-every': { type: 'string', default: '2500' },
    'sample-ms': { type: 'string', default: '1000' },
    'max-rate': { type: 'string', default: '25' },
    tmpfs: { type: 'string' },
    'real-agent': { type: 'boolean', default: false },
    'probe-heap': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (flags.help) {
  process.stdout.write(
    'usage: node dist/bench/churn.js [--cycles N] [--concurrency 8] [--long-lived 20] [--warmup-fraction 0.1]\n' +
      '         [--settle-ms 20000] [--rotate-every 25] [--ca-rotate-every 2500] [--sample-ms 1000] [--max-rate 25] [--tmpfs true|false] [--real-agent]\n' +
      '         [--probe-heap]   (diagnosis only: driver with --expose-gc; V8 heap after a forced GC at each checkpoint)\n' +
      'defaults: --cycles 10000 with the development agent, 1000 with --real-agent (a real SPIRE server + agent from `bash e2e/setup`)\n',
  );
  process.exit(0);
}

function intFlag(name: string, text: string | undefined, min: number): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min) {
    process.stderr.write(`churn: --${name} must be a whole number >= ${min}, got ${String(text)}\n`);
    process.exit(2);
  }
  return value;
}

const REAL_AGENT = flags['real-agent'] === true;
const PROBE_HEAP = flags['probe-heap'] === true;
const CYCLES = intFlag('cycles', flags.cycles ?? (REAL_AGENT ? '1000' : '10000'), 1);
const CONCURRENCY = intFlag('concurrency', flags.concurrency, 1);
const LONG_LIVED = intFlag('long-lived', flags['long-lived'], 0);
const SETTLE_MS = intFlag('settle-ms', flags['settle-ms'], 0);
const ROTATE_EVERY = intFlag('rotate-every', flags['rotate-every'], 0);
const CA_ROTATE_EVERY = REAL_AGENT ? 0 : intFlag('ca-rotate-every', flags['ca-rotate-every'], 0);
const SAMPLE_MS = intFlag('sample-ms', flags['sample-ms'], 100);
const MAX_RATE = intFlag('max-rate', flags['max-rate'], 0);
const WARMUP_FRACTION = Number(flags['warmup-fraction']);
if (!(WARMUP_FRACTION > 0 && WARMUP_FRACTION < 1)) {
  process.stderr.write(`churn: --warmup-fraction must be between 0 and 1, got ${String(flags['warmup-fraction'])}\n`);
  process.exit(2);
}
const WARMUP = Math.max(1, Math.round(CYCLES * WARMUP_FRACTION));
const USE_TMPFS = flags.tmpfs === undefined ? runningAsRoot() : flags.tmpfs === 'true';
const PUBLISH_TIMEOUT_MS = 60_000;
/** Long-lived entries on the real agent: rotated at about half of this, by the agent itself. */
const REAL_LONG_LIVED_TTL_SECONDS = 60;
/** Real-agent entries are created and deleted this many per spire-server call. */
const REAL_ENTRY_BATCH = 50;

// -------------------------------------------------------------- the driver

interface DriverPaths {
  dir: string;
  csiSocketPath: string;
  stateDir: string;
  kubeletRootDir: string;
  adminSocketPath: string;
  logFile: string;
  metricsPort: number;
  /** --probe-heap: the preload that answers SIGUSR2, and where it writes its answer. */
  probePreload: string;
  probeOutput: string;
}

/** The driver binary as the image runs it, logging (JSON, level info) to a file as a container runtime would keep it. */
function spawnDriver(paths: DriverPaths): ChildProcess {
  const probe: string[] = [];
  if (PROBE_HEAP) {
    // Diagnosis only (the image has no --expose-gc): on SIGUSR2, two full GCs, then process.memoryUsage() to a file.
    fs.writeFileSync(
      paths.probePreload,
      `process.on('SIGUSR2', () => { global.gc(); global.gc(); require('fs').writeFileSync(${JSON.stringify(paths.probeOutput)}, JSON.stringify(process.memoryUsage())); });\n`,
    );
    probe.push('--expose-gc', `--require=${paths.probePreload}`);
  }
  const log = fs.openSync(paths.logFile, 'a');
  try {
    return spawn(
      process.execPath,
      [
        ...DRIVER_NODE_FLAGS,
        ...probe,
        path.join(PACKAGE_ROOT, 'dist', 'src', 'main.js'),
        `--endpoint=unix://${paths.csiSocketPath}`,
        `--node-name=${NODE_NAME}`,
        `--admin-socket=${paths.adminSocketPath}`,
        `--state-dir=${paths.stateDir}`,
        `--kubelet-root-dir=${paths.kubeletRootDir}`,
        `--publish-timeout=${PUBLISH_TIMEOUT_MS - 5000}ms`,
        `--tmpfs=${String(USE_TMPFS)}`,
        '--tmpfs-size=1Mi',
        '--log-level=info',
        `--metrics-address=127.0.0.1:${paths.metricsPort}`,
      ],
      { stdio: ['ignore', log, log] },
    );
  } finally {
    fs.closeSync(log);
  }
}

async function waitUntilReady(kubelet: KubeletSimulator, child: ChildProcess, logFile: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (await kubelet.probeReady()) return;
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      throw new Error(`the driver did not become ready; its log:\n${tail(await fsp.readFile(logFile, 'utf8').catch(() => ''), 30)}`);
    }
    await sleep(100);
  }
}

async function stopDriver(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------- measurements

async function rssBytes(pid: number): Promise<number> {
  const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN) * 1024;
}

/** Open descriptors by kind: socket, pipe, anon_inode:<what>, or file. */
async function fdsOf(pid: number): Promise<{ total: number; kinds: Record<string, number> }> {
  const dir = `/proc/${pid}/fd`;
  const kinds: Record<string, number> = {};
  let total = 0;
  for (const fd of await fsp.readdir(dir)) {
    let target: string;
    try {
      target = await fsp.readlink(path.join(dir, fd));
    } catch {
      continue; // closed in the meantime
    }
    const kind = /^(socket|pipe):/.exec(target)?.[1] ?? (target.startsWith('anon_inode:') ? target : target.startsWith('/dev/') ? target : 'file');
    kinds[kind] = (kinds[kind] ?? 0) + 1;
    total++;
  }
  return { total, kinds };
}

/** One Prometheus scrape of the driver, on a fresh connection each time (so scraping leaves no keep-alive socket). */
async function scrape(port: number): Promise<Map<string, number>> {
  const body = await new Promise<string>((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => resolve(text));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.setTimeout(10_000, () => request.destroy(new Error('metrics scrape timed out')));
  });
  const values = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

/**
 * A scrape whose active resources equal those of the scrape before it (up to
 * five tries), so that one fs request or mount(8) child that happens to be in
 * flight (a rotation being written) does not show up as a difference.
 */
async function stableScrape(port: number): Promise<Map<string, number>> {
  let previous = await scrape(port);
  for (let i = 0; i < 5; i++) {
    await sleep(300);
    const now = await scrape(port);
    if (JSON.stringify(activeResources(now)) === JSON.stringify(activeResources(previous))) return now;
    previous = now;
  }
  return previous;
}

/** nodejs_active_resources{type="…"} (process.getActiveResourcesInfo() inside the driver, at scrape time). */
function activeResources(metrics: Map<string, number>): Record<string, number> {
  const resources: Record<string, number> = {};
  for (const [key, value] of metrics) {
    const type = /^nodejs_active_resources\{type="([^"]+)"\}$/.exec(key)?.[1];
    if (type !== undefined) resources[type] = value;
  }
  return resources;
}

/** --probe-heap: the driver's process.memoryUsage() right after two forced full GCs. */
async function probeHeap(pid: number, paths: DriverPaths): Promise<NodeJS.MemoryUsage | undefined> {
  if (!PROBE_HEAP) return undefined;
  await fsp.rm(paths.probeOutput, { force: true });
  process.kill(pid, 'SIGUSR2');
  for (let i = 0; i < 100; i++) {
    await sleep(100);
    try {
      return JSON.parse(await fsp.readFile(paths.probeOutput, 'utf8')) as NodeJS.MemoryUsage;
    } catch {
      // not written (completely) yet
    }
  }
  return undefined;
}

interface Sample {
  /** Wall clock, to place the driver's log lines among the cycles. */
  atMs: number;
  cycle: number;
  phase: 'warm-up' | 'churn';
  rssBytes: number;
  fds: number;
}

/** Samples the driver's RSS and descriptor count every `SAMPLE_MS` while it runs. */
class Sampler {
  readonly samples: Sample[] = [];
  cycle = 0;
  phase: Sample['phase'] = 'warm-up';
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly pid: number) {}

  start(): void {
    const tick = async (): Promise<void> => {
      try {
        const [rss, fds] = await Promise.all([rssBytes(this.pid), fsp.readdir(`/proc/${this.pid}/fd`)]);
        this.samples.push({ atMs: Date.now(), cycle: this.cycle, phase: this.phase, rssBytes: rss, fds: fds.length });
      } catch {
        // the driver is gone; the run reports that
      }
      if (this.timer !== undefined) this.timer = setTimeout(() => void tick(), SAMPLE_MS);
    };
    this.timer = setTimeout(() => void tick(), SAMPLE_MS);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** Everything looked at when the churn pauses. */
interface Checkpoint {
  label: string;
  rssBytes: number;
  rssSamples: number[];
  fds: { total: number; kinds: Record<string, number> };
  metrics: Map<string, number>;
  mounts: string[];
  metadataFiles: string[];
  tombstones: string[];
  quarantined: string[];
  podDirs: string[];
  /** Open SubscribeToX509SVIDs / SubscribeToX509Bundles streams on the development agent; undefined on the real one. */
  svidStreams: number | undefined;
  bundleStreams: number | undefined;
  /** SubscribeToX509SVIDs requests the agent received so far (development agent: its log of them; real agent: its debug log lines). */
  subscriptions: number;
  agentRssBytes: number | undefined;
  /** NodePublishVolume calls so far (long-lived + cycles): one stream each, unless a stream had to be re-opened. */
  publishes: number;
  /** --probe-heap only: after forced GCs, taken after everything else. */
  afterGc: NodeJS.MemoryUsage | undefined;
}

interface Setup {
  paths: DriverPaths;
  kubelet: KubeletSimulator;
  agent: ChurnAgent;
  describeAgent: string;
  svidStreams: () => number | undefined;
  bundleStreams: () => number | undefined;
  subscriptions: () => Promise<number>;
  agentPid: () => number | undefined;
  close: () => Promise<void>;
}

async function checkpoint(
  label: string,
  setup: Setup,
  pid: number,
  longLived: LongLivedVolumes,
  settleMs: number,
  publishes: number,
): Promise<Checkpoint> {
  process.stderr.write(`churn: ${label}: settling ${Math.round(settleMs / 1000)} s…\n`);
  await sleep(settleMs);
  const rssSamples: number[] = [];
  for (let i = 0; i < 5; i++) {
    if (i > 0) await sleep(1000);
    rssSamples.push(await rssBytes(pid));
  }
  const { paths } = setup;
  const keep = new Set(longLived.volumes.map((v) => v.targetPath));
  const agentPid = setup.agentPid();
  return {
    label,
    rssBytes: quantile(rssSamples, 0.5),
    rssSamples,
    fds: await fdsOf(pid),
    metrics: await stableScrape(paths.metricsPort),
    mounts: (await mountsUnder(paths.kubeletRootDir)).map((m) => m.mountPoint).filter((p) => !keep.has(p)),
    metadataFiles: (await stateFiles(paths.stateDir, 'volumes')).filter((name) => !metadataFileNames(longLived.volumes).includes(name)),
    tombstones: await stateFiles(paths.stateDir, 'tombstones'),
    quarantined: await stateFiles(paths.stateDir, 'quarantine'),
    podDirs: await leftoverPodDirs(
      paths.kubeletRootDir,
      longLived.leases.map((l) => l.pod),
    ),
    svidStreams: setup.svidStreams(),
    bundleStreams: setup.bundleStreams(),
    subscriptions: await setup.subscriptions(),
    agentRssBytes: agentPid === undefined ? undefined : await rssBytes(agentPid).catch(() => undefined),
    publishes,
    afterGc: await probeHeap(pid, paths),
  };
}

// ------------------------------------------------------------ the agents

async function devAgentSetup(): Promise<Setup> {
  const dir = await makeScratchDir('churn');
  const releaseMounts = unmountOnExit(dir);
  const paths = driverPaths(dir, path.join(dir, 'agent', 'admin.sock'), await freeTcpPort());
  const agent = await DevAgent.start({ socketPath: paths.adminSocketPath });
  const kubelet = new KubeletSimulator({ csiSocketPath: paths.csiSocketPath, kubeletRootDir: paths.kubeletRootDir });
  return {
    paths,
    kubelet,
    agent: devAgentChurn(agent, kubelet),
    describeAgent: "the development agent (in the script's process)",
    svidStreams: () => agent.openSvidStreams(),
    bundleStreams: () => agent.openBundleStreams(),
    subscriptions: async () => agent.receivedSelectorSets().length,
    agentPid: () => undefined,
    async close() {
      kubelet.close();
      await agent.close();
      await unmountAllUnder(dir);
      if (process.env['KEEP_SCRATCH'] === '1') process.stderr.write(`churn: scratch dir kept: ${dir}\n`);
      else await removeScratchDir(dir);
      releaseMounts();
    },
  };
}

/**
 * A real SPIRE server and agent; the pods' entries are made and deleted in
 * batches (e2e/churn-agent.ts, shared with e2e/churn.test.ts).
 */
async function realAgentSetup(): Promise<Setup> {
  const testbed = await SpireTestbed.start({ label: 'churn' });
  const dir = path.join(testbed.dir, 'driver');
  await fsp.mkdir(dir, { recursive: true });
  const paths = driverPaths(dir, testbed.adminSocketPath, await freeTcpPort());
  const kubelet = new KubeletSimulator({ csiSocketPath: paths.csiSocketPath, kubeletRootDir: paths.kubeletRootDir });
  return {
    paths,
    kubelet,
    agent: realAgentChurn(testbed, kubelet, { longLivedTtlSeconds: REAL_LONG_LIVED_TTL_SECONDS, entryBatch: REAL_ENTRY_BATCH }),
    describeAgent: `a real SPIRE ${path.basename(path.dirname(path.dirname(testbed.tools.spireAgent)))} server + agent (e2e testbed)`,
    // The real agent shows no open-stream count (its telemetry counts RPCs when they end, and is off in the e2e config).
    svidStreams: () => undefined,
    bundleStreams: () => undefined,
    subscriptions: () => agentSubscriptions(testbed),
    agentPid: () => testbed.agent?.child.pid,
    async close() {
      kubelet.close();
      await testbed.close();
    },
  };
}

function driverPaths(dir: string, adminSocketPath: string, metricsPort: number): DriverPaths {
  return {
    dir,
    csiSocketPath: path.join(dir, 'plugin', 'csi.sock'),
    stateDir: path.join(dir, 'state'),
    kubeletRootDir: path.join(dir, 'kubelet'),
    adminSocketPath,
    logFile: path.join(dir, 'driver.log'),
    metricsPort,
    probePreload: path.join(dir, 'heap-probe.cjs'),
    probeOutput: path.join(dir, 'heap-probe.json'),
  };
}

// ---------------------------------------------------------------- report

const MiB = 1024 * 1024;

function mib(bytes: number | undefined): string {
  return bytes === undefined || !Number.isFinite(bytes) ? 'n/a' : `${(bytes / MiB).toFixed(1)} MiB`;
}

function summary(values: number[], format: (v: number) => string): string {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return 'n/a';
  return `median ${format(quantile(finite, 0.5))} (min ${format(Math.min(...finite))}, max ${format(Math.max(...finite))}, n=${finite.length})`;
}

function ms(value: number): string {
  return `${value.toFixed(1)} ms`;
}

/** Least-squares slope of RSS over cycles, as MiB per 1,000 cycles, with the span it was fitted on. */
function slope(samples: readonly Sample[]): string {
  if (samples.length < 3) return 'n/a';
  const xs = samples.map((s) => s.cycle);
  const ys = samples.map((s) => s.rssBytes / MiB);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my);
    den += ((xs[i] as number) - mx) ** 2;
  }
  if (den === 0) return 'n/a';
  const perThousand = (num / den) * 1000;
  return `${perThousand >= 0 ? '+' : ''}${perThousand.toFixed(2)} MiB per 1,000 cycles (cycles ${xs[0]}–${xs.at(-1)}, n=${xs.length})`;
}

function kindsText(kinds: Record<string, number>): string {
  return Object.entries(kinds)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([kind, count]) => `${kind} ${count}`)
    .join(', ');
}

function resourcesText(resources: Record<string, number>): string {
  return Object.entries(resources)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([type, count]) => `${type} ${count}`)
    .join(', ');
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

interface LogMessage {
  count: number;
  firstMs: number;
  lastMs: number;
}

/** Counts the driver's log lines by level and lists the distinct warn/error messages, with when they came. */
async function logSummary(logFile: string): Promise<{ warn: number; error: number; messages: Map<string, LogMessage> }> {
  const result = { warn: 0, error: 0, messages: new Map<string, LogMessage>() };
  const text = await fsp.readFile(logFile, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    let entry: { level?: unknown; msg?: unknown; time?: unknown };
    try {
      entry = JSON.parse(line) as { level?: unknown; msg?: unknown; time?: unknown };
    } catch {
      continue;
    }
    // Labels (the driver's pino formatter), or pino's numbers.
    const level = typeof entry.level === 'number' ? (entry.level >= 50 ? 'error' : entry.level >= 40 ? 'warn' : 'info') : String(entry.level);
    if (level !== 'warn' && level !== 'error' && level !== 'fatal') continue;
    result[level === 'warn' ? 'warn' : 'error']++;
    const key = `${level}: ${String(entry.msg).slice(0, 160)}`;
    const at = typeof entry.time === 'string' ? Date.parse(entry.time) : typeof entry.time === 'number' ? entry.time : NaN;
    const seen = result.messages.get(key) ?? { count: 0, firstMs: at, lastMs: at };
    seen.count++;
    seen.lastMs = at;
    result.messages.set(key, seen);
  }
  return result;
}

/** The cycle count of the sample nearest to a wall-clock time. */
function cycleAt(samples: readonly Sample[], atMs: number): string {
  let best: Sample | undefined;
  for (const sample of samples) if (!best || Math.abs(sample.atMs - atMs) < Math.abs(best.atMs - atMs)) best = sample;
  return best && Number.isFinite(atMs) ? `~${best.cycle}` : '?';
}

function leakLine(what: string, left: string[]): string {
  const examples = left.length > 0 ? `  <-- ${left.slice(0, 3).join(', ')}${left.length > 3 ? ', …' : ''}` : '';
  return `${what}: ${left.length}${examples}`;
}

// ------------------------------------------------------------------- main

async function main(): Promise<number> {
  const setup = REAL_AGENT ? await realAgentSetup() : await devAgentSetup();
  const { paths, kubelet } = setup;
  let child: ChildProcess | undefined;
  let sampler: Sampler | undefined;
  let forgetPid = (): void => undefined;
  try {
    child = spawnDriver(paths);
    const pid = child.pid as number;
    forgetPid = killOnExit(pid);
    await waitUntilReady(kubelet, child, paths.logFile);

    console.log(
      `spire-csi-driver churn soak: ${CYCLES} publish/unpublish cycles (first ${WARMUP} warm-up), ${CONCURRENCY} in flight, ` +
        `${LONG_LIVED} long-lived volumes, ${USE_TMPFS ? 'per-volume tmpfs' : 'plain directories'}, against ${setup.describeAgent}; ` +
        `node ${process.version}, driver flags ${DRIVER_NODE_FLAGS.join(' ')}, ${os.availableParallelism()} CPUs (shared with the agent and this script)`,
    );
    const startRss = await rssBytes(pid);
    const longLived = new LongLivedVolumes(kubelet, setup.agent, paths.kubeletRootDir);
    await longLived.publishAll(LONG_LIVED, PUBLISH_TIMEOUT_MS);
    await sleep(2000);
    const afterLongLived = { rss: await rssBytes(pid), fds: await fdsOf(pid) };

    sampler = new Sampler(pid);
    sampler.start();
    const allFailures: ChurnFailure[] = [];
    const started = performance.now();
    let lastProgress = started;
    const onCycle = (cycle: number): void => {
      if (sampler) sampler.cycle = cycle + 1;
      const now = performance.now();
      if ((cycle + 1) % 1000 === 0 || now - lastProgress > 30_000) {
        lastProgress = now;
        const last = sampler?.samples.at(-1);
        process.stderr.write(
          `churn: ${cycle + 1}/${CYCLES} cycles, ${((now - started) / 1000).toFixed(0)} s, RSS ${mib(last?.rssBytes)}, FDs ${last?.fds ?? '?'}\n`,
        );
      }
    };
    const common = {
      kubelet,
      kubeletRootDir: paths.kubeletRootDir,
      agent: setup.agent,
      concurrency: CONCURRENCY,
      rotateEvery: ROTATE_EVERY,
      caRotateEvery: CA_ROTATE_EVERY,
      publishTimeoutMs: PUBLISH_TIMEOUT_MS,
      maxCyclesPerSecond: MAX_RATE,
      failFast: false,
      onCycle,
    };

    const warm = await runChurn({ ...common, cycles: WARMUP, firstCycle: 0 }, longLived);
    allFailures.push(...warm.failures);
    sampler.stop();
    const warmEnd = performance.now();
    const afterWarmup = await checkpoint(`after ${WARMUP} warm-up cycles`, setup, pid, longLived, SETTLE_MS, LONG_LIVED + WARMUP);

    // Halfway the churn pauses once more: settled at half against settled at
    // the end tells a plateau reached late from memory still growing.
    const half = Math.max(WARMUP, Math.floor(CYCLES / 2));
    sampler.phase = 'churn';
    sampler.start();
    let churnStart = performance.now();
    const firstHalf = await runChurn({ ...common, cycles: half - WARMUP, firstCycle: WARMUP }, longLived);
    let churnMs = performance.now() - churnStart;
    sampler.stop();
    const atHalf = await checkpoint(`after ${half} cycles`, setup, pid, longLived, SETTLE_MS, LONG_LIVED + half);
    sampler.start();
    churnStart = performance.now();
    const secondHalf = await runChurn({ ...common, cycles: CYCLES - half, firstCycle: half }, longLived);
    churnMs += performance.now() - churnStart;
    const main = { failures: [...firstHalf.failures, ...secondHalf.failures], cycleMs: [...firstHalf.cycleMs, ...secondHalf.cycleMs] };
    allFailures.push(...main.failures);
    sampler.stop();
    const atEnd = await checkpoint(`after all ${CYCLES} cycles`, setup, pid, longLived, SETTLE_MS, LONG_LIVED + CYCLES);

    // Last, the long-lived volumes go too: then nothing at all may be left.
    await longLived.unpublishAll();
    await setup.agent.flush?.();
    const empty = await checkpoint(
      'after unpublishing the long-lived volumes too',
      setup,
      pid,
      longLived,
      Math.min(SETTLE_MS, 5000),
      LONG_LIVED + CYCLES,
    );

    // ------------------------------------------------------------ report
    const churnSeconds = (warmEnd - started + churnMs) / 1000;
    const cycleMs = [...warm.cycleMs, ...main.cycleMs];
    const tenth = Math.max(1, Math.floor(main.cycleMs.length / 10));
    const churnSamples = sampler.samples.filter((s) => s.phase === 'churn');
    const sampleTenth = Math.max(1, Math.floor(churnSamples.length / 10));
    const rss = (s: Sample): number => s.rssBytes;
    const growth = ((atEnd.rssBytes - afterWarmup.rssBytes) / afterWarmup.rssBytes) * 100;
    const pct = (value: number): string => `${value >= 0 ? '+' : ''}${value.toFixed(1)} %`;
    const maxRss = Math.max(...sampler.samples.map(rss), afterWarmup.rssBytes, atEnd.rssBytes);
    const volumesMetric = (c: Checkpoint): string => String(c.metrics.get('spire_csi_volumes') ?? 'n/a');
    const streams = (c: Checkpoint): string =>
      c.svidStreams === undefined ? 'n/a (real agent: not observable)' : `${c.svidStreams} SVID + ${c.bundleStreams} bundle`;
    const log = await logSummary(paths.logFile);

    console.log(
      `  cycles: ${CYCLES} in ${churnSeconds.toFixed(1)} s of churn (${(CYCLES / churnSeconds).toFixed(1)} cycles/s); failed cycles: ${allFailures.length}`,
    );
    const rotations = ROTATE_EVERY > 0 ? Math.floor((CYCLES - 1) / ROTATE_EVERY) : 0;
    const caRotations = CA_ROTATE_EVERY > 0 ? Math.floor((CYCLES - 1) / CA_ROTATE_EVERY) : 0;
    console.log(
      REAL_AGENT
        ? `  rotations: the agent re-signs the long-lived SVIDs by their ${REAL_LONG_LIVED_TTL_SECONDS} s TTL; ${CYCLES} per-pod entries created and deleted`
        : `  rotations during the churn: ${rotations} long-lived SVIDs re-signed (one every ${ROTATE_EVERY} cycles), ${caRotations} CA rotations (every ${CA_ROTATE_EVERY} cycles)`,
    );
    console.log(
      `  cycle time (publish + check + unpublish): p50 ${ms(quantile(cycleMs, 0.5))}, p99 ${ms(quantile(cycleMs, 0.99))}, max ${ms(quantile(cycleMs, 1))}`,
    );
    console.log(
      `    first tenth after warm-up: p50 ${ms(quantile(main.cycleMs.slice(0, tenth), 0.5))}, p99 ${ms(quantile(main.cycleMs.slice(0, tenth), 0.99))}; ` +
        `last tenth: p50 ${ms(quantile(main.cycleMs.slice(-tenth), 0.5))}, p99 ${ms(quantile(main.cycleMs.slice(-tenth), 0.99))}`,
    );
    console.log(`  RSS: at start ${mib(startRss)}, with the ${LONG_LIVED} long-lived volumes ${mib(afterLongLived.rss)}`);
    const growthHalf = ((atEnd.rssBytes - atHalf.rssBytes) / atHalf.rssBytes) * 100;
    console.log(
      `  RSS settled (${Math.round(SETTLE_MS / 1000)} s idle, median of 5): after warm-up ${mib(afterWarmup.rssBytes)}, after ${half} cycles ${mib(atHalf.rssBytes)}, ` +
        `at the end ${mib(atEnd.rssBytes)}: growth after warm-up ${pct(growth)} (target <= 5 %), over the second half ${pct(growthHalf)}`,
    );
    const firstTenthRss = quantile(churnSamples.slice(0, sampleTenth).map(rss), 0.5);
    const lastTenthRss = quantile(churnSamples.slice(-sampleTenth).map(rss), 0.5);
    console.log(`  RSS while churning after warm-up: ${summary(churnSamples.map(rss), mib)}`);
    console.log(
      `    median of the first tenth of those samples ${mib(firstTenthRss)}, of the last tenth ${mib(lastTenthRss)}: ` +
        `growth ${pct(((lastTenthRss - firstTenthRss) / firstTenthRss) * 100)} (target <= 5 %)`,
    );
    const maxSample = sampler.samples.reduce<Sample | undefined>((best, s) => (!best || s.rssBytes > best.rssBytes ? s : best), undefined);
    console.log(`  max RSS (any sample): ${mib(maxRss)}${maxSample && maxSample.rssBytes === maxRss ? ` at cycle ~${maxSample.cycle}` : ''}`);
    console.log(
      `  RSS trend while churning after warm-up (least squares over the samples): ${slope(churnSamples)}; over its second half: ${slope(churnSamples.slice(Math.floor(churnSamples.length / 2)))}`,
    );
    for (const c of [afterWarmup, atHalf, atEnd]) {
      const heapTotal = c.metrics.get('nodejs_heap_size_total_bytes');
      console.log(
        `  ${c.label}, settled, no forced GC: V8 heap used ${mib(c.metrics.get('nodejs_heap_size_used_bytes'))} of ${mib(heapTotal)}, ` +
          `external ${mib(c.metrics.get('nodejs_external_memory_bytes'))}, RSS outside the V8 heap ${mib(c.rssBytes - (heapTotal ?? NaN))}`,
      );
      if (c.afterGc) {
        console.log(
          `    after two forced full GCs (--probe-heap): heap used ${mib(c.afterGc.heapUsed)} of ${mib(c.afterGc.heapTotal)}, external ${mib(c.afterGc.external)}, ` +
            `array buffers ${mib(c.afterGc.arrayBuffers)}, RSS ${mib(c.afterGc.rss)}`,
        );
      }
    }
    console.log(
      `  open FDs: with the long-lived volumes ${afterLongLived.fds.total}, after warm-up ${afterWarmup.fds.total}, at half ${atHalf.fds.total}, at the end ${atEnd.fds.total}, ` +
        `all unpublished ${empty.fds.total}; while churning ${summary(
          churnSamples.map((s) => s.fds),
          String,
        )}`,
    );
    console.log(`    after warm-up: ${kindsText(afterWarmup.fds.kinds)}`);
    console.log(`    at half:       ${kindsText(atHalf.fds.kinds)}`);
    console.log(`    at the end:    ${kindsText(atEnd.fds.kinds)}`);
    console.log(`  driver active resources (nodejs_active_resources: timers, handles, requests):`);
    console.log(`    after warm-up: ${resourcesText(activeResources(afterWarmup.metrics))}`);
    console.log(`    at half:       ${resourcesText(activeResources(atHalf.metrics))}`);
    console.log(`    at the end:    ${resourcesText(activeResources(atEnd.metrics))}`);
    console.log(`    all unpublished: ${resourcesText(activeResources(empty.metrics))}`);
    for (const c of [afterWarmup, atHalf, atEnd]) {
      console.log(`  ${c.label} (${LONG_LIVED} long-lived volumes published):`);
      console.log(`    ${leakLine('mounts under the kubelet dir besides the long-lived volumes', c.mounts)}`);
      console.log(`    ${leakLine('metadata files besides the long-lived volumes (state volumes/)', c.metadataFiles)}`);
      console.log(`    ${leakLine('tombstones', c.tombstones)}; ${leakLine('quarantined', c.quarantined)}`);
      console.log(`    ${leakLine('pod directories left by the churn', c.podDirs)}`);
      console.log(`    agent streams: ${streams(c)} (long-lived: ${LONG_LIVED}); spire_csi_volumes ${volumesMetric(c)}`);
      console.log(`    SubscribeToX509SVIDs requests the agent received so far: ${c.subscriptions} (publishes so far: ${c.publishes})`);
    }
    console.log(`  ${empty.label}:`);
    console.log(
      `    mounts ${empty.mounts.length}, metadata files ${empty.metadataFiles.length}, tombstones ${empty.tombstones.length}, ` +
        `pod directories ${empty.podDirs.length}, agent streams ${streams(empty)}, spire_csi_volumes ${volumesMetric(empty)}`,
    );
    if (setup.agentPid() !== undefined) {
      console.log(
        `  SPIRE agent RSS (for scale): after warm-up ${mib(afterWarmup.agentRssBytes)}, at half ${mib(atHalf.agentRssBytes)}, at the end ${mib(atEnd.agentRssBytes)}`,
      );
    }
    console.log(`  driver log: ${log.warn} warn and ${log.error} error lines`);
    for (const [message, seen] of [...log.messages].sort((a, b) => b[1].count - a[1].count).slice(0, 8)) {
      console.log(`    ${seen.count} x ${message}  (cycle ${cycleAt(sampler.samples, seen.firstMs)} to ${cycleAt(sampler.samples, seen.lastMs)})`);
    }
    if (allFailures.length > 0) {
      console.log('  failed cycles (first 5):');
      for (const f of allFailures.slice(0, 5)) console.log(`    cycle ${f.cycle}: ${f.what}: ${f.error.slice(0, 300)}`);
    }
    return 0;
  } finally {
    sampler?.stop();
    if (child) await stopDriver(child);
    forgetPid();
    await setup.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`churn: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
