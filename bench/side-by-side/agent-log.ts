/**
 * What the real SPIRE agent's log says about the SVIDs it holds: it logs
 * "Creating X509-SVID" with the entry's spiffe_id (level INFO) when it has
 * signed an entry's first SVID, which is when a workload of that entry can be
 * answered at once.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { waitFor, type SpireTestbed } from '../../e2e/spire-testbed.js';

/** Distinct SPIFFE IDs under `idPrefix` the agent has created an X.509-SVID for. */
export async function signedSvids(testbed: SpireTestbed, idPrefix: string): Promise<number> {
  const log = await fsp.readFile(path.join(testbed.dir, 'agent.log'), 'utf8').catch(() => '');
  const ids = new Set<string>();
  for (const line of log.split('\n')) {
    if (!line.includes('Creating X509-SVID')) continue;
    const id = /spiffe_id="?([^"\s]+)/.exec(line)?.[1];
    if (id?.startsWith(idPrefix)) ids.add(id);
  }
  return ids.size;
}

/**
 * Waits until the agent has signed the SVIDs of `count` entries under
 * `idPrefix`, so that what is measured next is serving identities, not the
 * entries' way from the server (spire-controller-manager creates a pod's entry
 * before the pod reaches a node).
 */
export async function waitForSignedSvids(testbed: SpireTestbed, idPrefix: string, count: number, timeoutMs = 120_000): Promise<void> {
  await waitFor(`the agent to sign ${count} SVIDs under ${idPrefix}`, async () => (await signedSvids(testbed, idPrefix)) >= count, {
    timeoutMs,
    intervalMs: 250,
    diagnostics: async () => `signed so far: ${await signedSvids(testbed, idPrefix)}\n${testbed.diagnostics(10)}`,
  });
}
