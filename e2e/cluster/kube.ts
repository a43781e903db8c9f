/**
 * kubectl for the real-cluster tests: runs the pinned kubectl against the cluster that e2e/cluster/test brought up
 * (KUBECONFIG and PATH come from `e2e/cluster/cluster env`), and waits with messages that say what was awaited and
 * what was last seen.
 */
import { execFile } from 'node:child_process';
import { waitFor as pollUntil } from '../spire-testbed.js';

export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface KubectlOptions {
  input?: string;
  timeoutMs?: number;
}

/** kubectl's own `--timeout=<n>s|m` among the arguments, in milliseconds. */
function kubectlTimeoutMs(args: readonly string[]): number | undefined {
  const flag = args.map((a) => /^--timeout=(\d+)(s|m)$/.exec(a)).find((m) => m !== null);
  return flag ? Number(flag[1]) * (flag[2] === 'm' ? 60_000 : 1000) : undefined;
}

/**
 * Runs kubectl; never throws for a non-zero exit (see `kubectlOk`). The process is killed after `timeoutMs`, by
 * default 60 s or 20 s more than a `--timeout=` the command gives kubectl itself.
 */
export function kubectl(args: readonly string[], options: KubectlOptions = {}): Promise<KubectlResult> {
  const own = kubectlTimeoutMs(args);
  const timeout = options.timeoutMs ?? (own === undefined ? 60_000 : own + 20_000);
  return new Promise((resolve) => {
    const child = execFile('kubectl', [...args], { timeout, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err === null) {
        resolve({ code: 0, stdout, stderr });
        return;
      }
      const killed = err.signal ? `killed by ${err.signal}${err.killed ? ` after ${timeout / 1000}s` : ''}; ` : '';
      resolve({ code: typeof err.code === 'number' ? err.code : 1, stdout, stderr: `${killed}${stderr || err.message}` });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Runs kubectl and returns its stdout; throws with the command and its stderr when it fails. */
export async function kubectlOk(args: readonly string[], options: KubectlOptions = {}): Promise<string> {
  const result = await kubectl(args, options);
  if (result.code !== 0) {
    throw new Error(`kubectl ${args.join(' ')} failed (exit ${result.code}): ${result.stderr.trim()}`);
  }
  return result.stdout;
}

export async function apply(manifest: string): Promise<void> {
  await kubectlOk(['apply', '-f', '-'], { input: manifest });
}

export async function getJson<T>(args: readonly string[]): Promise<T> {
  return JSON.parse(await kubectlOk([...args, '-o', 'json'])) as T;
}

/**
 * Polls `probe` until it returns a value other than undefined (the e2e suite's waitFor, with kubectl-friendly
 * arguments). On timeout the error names what was awaited and what `describe` reports, so a failed wait explains
 * itself.
 */
export function waitFor<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined>,
  describe?: () => Promise<string>,
  intervalMs = 250,
): Promise<T> {
  return pollUntil(what, probe, { timeoutMs, intervalMs, ...(describe ? { diagnostics: describe } : {}) });
}

interface PodStatusJson {
  metadata: { uid: string; name: string; namespace: string };
  status: {
    phase?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: { name: string; ready: boolean; restartCount: number; state?: Record<string, unknown> }[];
  };
}

export async function getPod(namespace: string, name: string): Promise<PodStatusJson | undefined> {
  const result = await kubectl(['-n', namespace, 'get', 'pod', name, '-o', 'json']);
  if (result.code !== 0) return undefined;
  return JSON.parse(result.stdout) as PodStatusJson;
}

function isReady(pod: PodStatusJson | undefined): boolean {
  return pod?.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
}

/** The pod's phase, container states and events: what a failed wait prints. */
export async function describePod(namespace: string, name: string): Promise<string> {
  const pod = await getPod(namespace, name);
  const events = await podEvents(namespace, name);
  return [
    `pod ${namespace}/${name}: ${pod === undefined ? 'not found' : `phase ${pod.status.phase}, containers ${JSON.stringify(pod.status.containerStatuses ?? [])}`}`,
    `events:\n${events.map((e) => `  ${e.reason}: ${e.message}`).join('\n') || '  (none)'}`,
  ].join('\n');
}

export async function waitPodReady(namespace: string, name: string, timeoutMs = 120_000): Promise<PodStatusJson> {
  return waitFor(
    `pod ${namespace}/${name} to be Ready`,
    timeoutMs,
    async () => {
      const pod = await getPod(namespace, name);
      return isReady(pod) ? pod : undefined;
    },
    () => describePod(namespace, name),
  );
}

export async function waitPodGone(namespace: string, name: string, timeoutMs = 120_000): Promise<void> {
  await waitFor(
    `pod ${namespace}/${name} to be deleted`,
    timeoutMs,
    async () => ((await getPod(namespace, name)) === undefined ? true : undefined),
    () => describePod(namespace, name),
  );
}

export interface PodEvent {
  reason: string;
  message: string;
  type: string;
  count: number;
}

export async function podEvents(namespace: string, name: string): Promise<PodEvent[]> {
  const list = await getJson<{ items: { reason?: string; message?: string; type?: string; count?: number }[] }>([
    '-n',
    namespace,
    'get',
    'events',
    '--field-selector',
    `involvedObject.kind=Pod,involvedObject.name=${name}`,
  ]);
  return list.items.map((e) => ({ reason: e.reason ?? '', message: e.message ?? '', type: e.type ?? '', count: e.count ?? 1 }));
}

/** Runs a command in a container and returns its stdout; throws with stderr on a non-zero exit. */
export async function exec(namespace: string, pod: string, command: readonly string[], container?: string): Promise<string> {
  return kubectlOk(['-n', namespace, 'exec', pod, ...(container ? ['-c', container] : []), '--', ...command]);
}

/** Like exec, but returns the exit code too. */
export async function execResult(namespace: string, pod: string, command: readonly string[]): Promise<KubectlResult> {
  return kubectl(['-n', namespace, 'exec', pod, '--', ...command]);
}
