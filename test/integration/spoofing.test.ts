/**
 * Attempts to break docs/design.md invariants 1 and 2 through the CSI socket: every
 * one is refused with INVALID_ARGUMENT before the driver touches the disk or
 * asks the agent for anything.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { NodePublishVolumeRequest } from '../../src/csi/messages.js';
import { Harness } from '../support/driver-harness.js';
import { isServiceError, type Pod } from '../support/kubelet-simulator.js';
import { pathExists } from '../support/volume-assertions.js';

describe('spoofing attempts are refused with INVALID_ARGUMENT', () => {
  let h: Harness;
  let victim: Pod;
  let attacker: Pod;

  before(async () => {
    h = await Harness.start({ publishTimeoutMs: 2000 });
    victim = h.kubelet.createPod({ namespace: 'kube-system', serviceAccount: 'admin', name: 'victim' });
    attacker = h.kubelet.createPod({ namespace: 'tenant', serviceAccount: 'app', name: 'attacker' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/admin', selectors: [`k8s:pod-uid:${victim.uid}`] });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/admin-ns', selectors: ['k8s:ns:kube-system', 'k8s:sa:admin'] });
  });
  after(async () => {
    await h.close();
  });

  async function assertRefused(request: NodePublishVolumeRequest, ...messageParts: string[]): Promise<void> {
    const subscriptionsBefore = h.agent.receivedSelectorSets().length;
    await assert.rejects(h.kubelet.sendPublish(request), (err) => {
      assert.ok(isServiceError(err));
      assert.equal(grpc.status[err.code], 'INVALID_ARGUMENT', err.details);
      for (const part of messageParts) assert.ok(err.details.includes(part), `"${err.details}" mentions "${part}"`);
      return true;
    });
    assert.equal(h.agent.receivedSelectorSets().length, subscriptionsBefore, 'the agent was not asked for anything');
    assert.equal(await pathExists(request.target_path), false, 'no target path created');
    assert.deepEqual(await fs.readdir(path.join(h.config.stateDir, 'volumes')), [], 'no metadata written');
  }

  const withAttributes = (attributes: Record<string, string>): NodePublishVolumeRequest => h.kubelet.publishRequest(attacker, { attributes });

  it("another pod's uid in the target path", async () => {
    const request = h.kubelet.publishRequest(attacker);
    request.target_path = h.kubelet.volumeFor(victim).targetPath;
    await assertRefused(request, 'does not belong to pod');
  });

  it("pod info claiming the victim's uid while the path is the attacker's", async () => {
    const request = h.kubelet.publishRequest(attacker);
    request.volume_context['csi.storage.k8s.io/pod.uid'] = victim.uid;
    await assertRefused(request, 'does not belong to pod');
  });

  it("a volume id that is not kubelet's hash of this pod and volume", async () => {
    const request = h.kubelet.publishRequest(attacker);
    request.volume_id = h.kubelet.volumeFor(victim).volumeId;
    await assertRefused(request, 'volume_id');
    request.volume_id = `csi-${createHash('sha256').update(`${attacker.uid}other`).digest('hex')}`;
    await assertRefused(request, 'volume_id');
  });

  it('a target path that escapes the pod directory', async () => {
    const request = h.kubelet.publishRequest(attacker);
    request.target_path = `${path.dirname(request.target_path)}/../../../../${victim.uid}/volumes/kubernetes.io~csi/svid/mount`;
    await assertRefused(request, 'does not belong to pod');
  });

  it('volume attributes that try to set selectors', async () => {
    await assertRefused(withAttributes({ 'csi.spire.io/selectors': 'k8s:ns:kube-system' }), 'unknown volume attribute');
    await assertRefused(withAttributes({ 'csi.spire.io/selector': 'k8s:sa:admin' }), 'unknown volume attribute');
    await assertRefused(withAttributes({ 'csi.spire.io/pod-uid': victim.uid }), 'unknown volume attribute');
    await assertRefused(withAttributes({ selectors: 'k8s:ns:kube-system' }), 'unknown volume attribute');
    await assertRefused(withAttributes({ 'k8s:ns': 'kube-system' }), 'unknown volume attribute');
  });

  it('file names with "/", "..", a leading ".", 300 bytes, or duplicates', async () => {
    await assertRefused(withAttributes({ 'csi.spire.io/cert-file': '../../../../etc/cron.d/x' }), 'csi.spire.io/cert-file');
    await assertRefused(withAttributes({ 'csi.spire.io/key-file': 'sub/key.pem' }), 'csi.spire.io/key-file');
    await assertRefused(withAttributes({ 'csi.spire.io/bundle-file': '..' }), 'csi.spire.io/bundle-file');
    await assertRefused(withAttributes({ 'csi.spire.io/cert-file': '..data' }), 'csi.spire.io/cert-file');
    await assertRefused(withAttributes({ 'csi.spire.io/cert-file': '.hidden' }), 'csi.spire.io/cert-file');
    await assertRefused(withAttributes({ 'csi.spire.io/cert-file': 'a'.repeat(300) }), 'csi.spire.io/cert-file');
    await assertRefused(withAttributes({ 'csi.spire.io/cert-file': 'same.pem', 'csi.spire.io/key-file': 'same.pem' }), 'needs its own name');
  });

  it('missing readOnly, a PersistentVolume, missing pod info, block access', async () => {
    await assertRefused(h.kubelet.publishRequest(attacker, { readOnly: false }), 'readOnly must be set to true');
    const persistent = h.kubelet.publishRequest(attacker);
    persistent.volume_context['csi.storage.k8s.io/ephemeral'] = 'false';
    await assertRefused(persistent, 'only inline ephemeral volumes');
    const noPodInfo = h.kubelet.publishRequest(attacker);
    for (const key of Object.keys(noPodInfo.volume_context)) delete noPodInfo.volume_context[key];
    await assertRefused(noPodInfo, 'podInfoOnMount: true');
    const block = h.kubelet.publishRequest(attacker);
    block.volume_capability = { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    await assertRefused(block, 'block access is not supported');
  });

  it('kubelet overwrites user-set pod info, so a pod only ever gets its own identity', async () => {
    // The pod author writes the victim's namespace and service account into
    // volumeAttributes; kubelet's podInfoOnMount keys win (mergeMap), and the
    // driver selects with the attacker's real pod info: no entry matches.
    const request = h.kubelet.publishRequest(attacker, {
      attributes: { 'csi.storage.k8s.io/pod.namespace': 'kube-system', 'csi.storage.k8s.io/serviceAccount.name': 'admin' },
    });
    await assert.rejects(h.kubelet.sendPublish(request), (err) => isServiceError(err) && err.code === grpc.status.DEADLINE_EXCEEDED);
    assert.deepEqual(h.agent.receivedSelectorSets().at(-1)?.slice(0, 2), [
      { type: 'k8s', value: 'ns:tenant' },
      { type: 'k8s', value: 'sa:app' },
    ]);
  });
});
