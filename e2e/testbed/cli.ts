/**
 * The SPIRE command-line tools run to completion: `spire-server` wrappers for
 * entries and bundles, and health checks of either tool.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { NODE_SPIFFE_ID } from './spire-config.js';

const execFileAsync = promisify(execFile);

export interface EntrySpec {
  spiffeId: string;
  /** `type:value` strings, split at the first colon by the CLI. */
  selectors: string[];
  /** -x509SVIDTTL in seconds; 0/undefined = the server's default_x509_svid_ttl. */
  x509SvidTtlSeconds?: number;
  hint?: string;
  parentId?: string;
  /** -federatesWith, `spiffe://<td>` each. */
  federatesWith?: string[];
}

export interface PodLike {
  uid: string;
  namespace: string;
  serviceAccount: string;
}

/** `spire-server` subcommands against one server's socket. */
export class SpireServerCli {
  constructor(
    private readonly binary: string,
    private readonly socketPath: string,
    /** Where files for `-data` go. */
    private readonly scratchDir: string,
  ) {}

  /** `spire-server entry create`; returns the entry id. */
  async createEntry(spec: EntrySpec): Promise<string> {
    const args = ['entry', 'create', '-parentID', spec.parentId ?? NODE_SPIFFE_ID, '-spiffeID', spec.spiffeId, '-output', 'json'];
    for (const selector of spec.selectors) args.push('-selector', selector);
    if (spec.x509SvidTtlSeconds) args.push('-x509SVIDTTL', String(spec.x509SvidTtlSeconds));
    if (spec.hint) args.push('-hint', spec.hint);
    for (const trustDomainId of spec.federatesWith ?? []) args.push('-federatesWith', trustDomainId);
    const { stdout } = await this.run(args);
    const ids = entryIdsFromJson(stdout);
    if (ids.length !== 1) throw new Error(`entry create did not report one created entry: ${stdout}`);
    return ids[0] as string;
  }

  /** Many entries in one `entry create -data` call (one CLI process instead of one per entry). */
  async createEntries(specs: EntrySpec[]): Promise<string[]> {
    const file = path.join(this.scratchDir, `entries-${Date.now()}.json`);
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
    const { stdout } = await this.run(['entry', 'create', '-data', file, '-output', 'json']);
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
    await this.run(['entry', 'delete', '-entryID', entryId]);
  }

  /** The server's current X.509 trust bundle of its own trust domain. */
  async bundle(): Promise<X509Certificate[]> {
    const { stdout } = await this.run(['bundle', 'show', '-format', 'pem']);
    return splitPem(stdout).map((pem) => new X509Certificate(pem));
  }

  /** `spire-server bundle show -format spiffe`: the own trust domain's bundle as a SPIFFE bundle document (JWKS). */
  async spiffeBundle(): Promise<string> {
    const { stdout } = await this.run(['bundle', 'show', '-format', 'spiffe']);
    return stdout;
  }

  /** `spire-server bundle set -format spiffe -id <trustDomainId>`: federates with that trust domain, using its bundle document. */
  async setFederatedBundle(trustDomainId: string, spiffeBundle: string): Promise<void> {
    const file = path.join(this.scratchDir, `bundle-${Date.now()}.json`);
    await fsp.writeFile(file, spiffeBundle);
    await this.run(['bundle', 'set', '-format', 'spiffe', '-id', trustDomainId, '-path', file]);
  }

  /** `spire-server x509 mint -spiffeID <id>`: an X509-SVID signed by this server's CA, leaf first. */
  async mintX509Svid(spiffeId: string): Promise<X509Certificate[]> {
    const dir = await fsp.mkdtemp(path.join(this.scratchDir, 'mint-'));
    await this.run(['x509', 'mint', '-spiffeID', spiffeId, '-write', dir]);
    return splitPem(await fsp.readFile(path.join(dir, 'svid.pem'), 'utf8')).map((pem) => new X509Certificate(pem));
  }

  /** `spire-server localauthority x509 show -output json`, parsed. */
  async localX509Authorities(): Promise<unknown> {
    const { stdout } = await this.run(['localauthority', 'x509', 'show', '-output', 'json']);
    return JSON.parse(stdout) as unknown;
  }

  /** Runs `spire-server <args> -socketPath <socket>`; a failure carries the command's output. */
  async run(args: string[]): Promise<{ stdout: string; stderr: string }> {
    try {
      return await execFileAsync(this.binary, [...args, '-socketPath', this.socketPath], { encoding: 'utf8', timeout: 30_000 });
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; message: string };
      throw new Error(`spire-server ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`, { cause: err });
    }
  }
}

/** Whether the command exits 0 within 10 s (health checks and probes). */
export async function commandSucceeds(command: string, args: string[]): Promise<boolean> {
  try {
    await execFileAsync(command, args, { timeout: 10_000 });
    return true;
  } catch {
    return false;
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
