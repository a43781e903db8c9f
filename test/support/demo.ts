/**
 * `npm run demo`: a local end-to-end run of the driver's main job on a fresh
 * machine. Starts the development SPIRE agent and the real driver binary,
 * plays kubelet for one pod, shows the files, the SPIFFE ID and the expiry,
 * rotates the SVID once, then unpublishes and cleans up.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Harness, eventually, runningAsRoot } from './driver-harness.js';
import { assertValidSvidVolume, pathExists, readVolume } from './volume-assertions.js';

function say(line = ''): void {
  process.stdout.write(`${line}\n`);
}

async function listVolume(targetPath: string): Promise<void> {
  for (const name of (await fs.readdir(targetPath)).sort()) {
    const full = path.join(targetPath, name);
    const stat = await fs.lstat(full);
    const detail = stat.isSymbolicLink() ? `-> ${await fs.readlink(full)}` : stat.isDirectory() ? '(directory)' : '';
    say(`    ${name.padEnd(34)} ${detail}`);
  }
}

async function main(): Promise<void> {
  const useTmpfs = runningAsRoot();
  say('spire-csi-driver demo');
  say('=====================');
  const h = await Harness.start({ driverProcess: true, useTmpfs, publishTimeoutMs: 20_000 });
  try {
    say(`development SPIRE agent: ${h.config.agentAdminSocketPath} (trust domain ${h.agent.trustDomain})`);
    say(
      `driver: node dist/src/main.js, CSI socket ${h.config.csiSocketPath}, per-volume tmpfs: ${useTmpfs ? 'yes (running as root)' : 'no (not root)'}`,
    );

    const pod = h.kubelet.createPod({ namespace: 'demo', serviceAccount: 'web', name: 'web-0' });
    const spiffeId = 'spiffe://example.org/ns/demo/sa/web';
    await h.agent.addEntry({ spiffeId, selectors: ['k8s:ns:demo', 'k8s:sa:web'] });
    say();
    say(`registration entry: ${spiffeId} <- selectors k8s:ns:demo, k8s:sa:web`);
    say(`kubelet: NodePublishVolume for pod demo/web-0 (uid ${pod.uid})`);
    const started = Date.now();
    const volume = await h.kubelet.publish(pod);
    say(`  -> OK after ${Date.now() - started} ms; ${volume.targetPath}:`);
    await listVolume(volume.targetPath);

    const first = await assertValidSvidVolume(volume.targetPath, spiffeId);
    say();
    say(`SPIFFE ID (URI SAN): ${first.leaf.subjectAltName?.replace(/^URI:/, '')}`);
    say(`serial ${first.leaf.serialNumber}, expires ${new Date(first.leaf.validTo).toISOString()}`);
    say('openssl verify -CAfile svid_bundle.pem svid.pem: OK; svid_key.pem matches svid.pem');

    say();
    say('SPIRE rotates the SVID...');
    const entryId = h.agent.listEntries()[0]?.id as string;
    await h.agent.rotateSvids(entryId);
    const rotated = await eventually('the rotated SVID', async () => {
      const content = await readVolume(volume.targetPath);
      return content.leaf.serialNumber !== first.leaf.serialNumber ? content : undefined;
    });
    await assertValidSvidVolume(volume.targetPath, spiffeId);
    say(`  ..data: ${first.version} -> ${rotated.version} (one atomic swap)`);
    say(`  serial ${first.leaf.serialNumber} -> ${new X509Certificate(rotated.certPem).serialNumber}`);

    say();
    say('kubelet: NodeUnpublishVolume');
    await h.kubelet.unpublish(volume);
    const metadataLeft = await fs.readdir(path.join(h.config.stateDir, 'volumes'));
    say(`  target path left: ${(await pathExists(volume.targetPath)) ? 'yes' : 'no'}; metadata files left: ${metadataLeft.length}`);
    say();
    say('demo finished: the driver published, rotated and cleaned up one volume.');
  } catch (err) {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n--- driver output ---\n${h.child?.output() ?? ''}\n`);
    process.exitCode = 1;
  } finally {
    await h.close();
  }
}

await main();
