/**
 * A failed write is retried on its own. With the volume's tmpfs full, a
 * rotation cannot be written: the previous files stay valid, the failure shows
 * in the metrics and the logs, and once space is free again the newest SVID
 * lands within the retry backoff, without any further message from the agent.
 * Needs root (a tmpfs per volume); CI runs it as root and fails rather than skip.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Harness, eventually, runningAsRoot } from '../support/driver-harness.js';
import { assertValidSvidVolume, readVolume } from '../support/volume-assertions.js';

const skip = !runningAsRoot() && !process.env['CI'] ? 'needs root to mount a tmpfs per volume (CI runs it as root)' : false;
const SPIFFE_ID = 'spiffe://example.org/write-retry';
const FAILURES = 'spire_csi_volume_write_failures_total';
const FAILING = 'spire_csi_volumes_write_failing';

/** Fills the tmpfs at `dir` with one file until the kernel says ENOSPC; the partial file stays. */
async function fillUp(dir: string): Promise<string> {
  const filler = path.join(dir, 'filler');
  // Twice the tmpfs size (Harness: 1 MiB), so the write must run out of space.
  await assert.rejects(fs.writeFile(filler, Buffer.alloc(2 * 1024 * 1024)), { code: 'ENOSPC' });
  assert.equal((await fs.statfs(dir)).bavail, 0, 'the tmpfs is full');
  return filler;
}

/** The lines of one metric in the Prometheus text format (HELP, TYPE and samples); empty if there is no such metric. */
async function metricText(h: Harness, name: string): Promise<string> {
  return h.metrics.registry.getSingleMetric(name) ? h.metrics.registry.getSingleMetricAsString(name) : '';
}

describe('write retry on a full tmpfs (root)', { skip }, () => {
  let h: Harness;
  before(async () => {
    assert.ok(runningAsRoot(), 'this test must run as root in CI');
    h = await Harness.start({ useTmpfs: true });
  });
  after(async () => {
    await h.close();
  });

  it('keeps the old files, reports the failure, and writes the newest SVID once space is free, with no new agent message', async () => {
    const pod = h.kubelet.createPod({ name: 'retry' });
    await h.agent.addEntry({ spiffeId: SPIFFE_ID, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const before = await assertValidSvidVolume(volume.targetPath, SPIFFE_ID);

    const filler = await fillUp(volume.targetPath);
    await h.agent.rotateSvids();
    await eventually('the failed write to be logged', () => h.logs.entries().some((e) => /writing the SVID files failed/.test(String(e['msg']))));
    const whileFailing = { failures: await metricText(h, FAILURES), failing: await metricText(h, FAILING) };
    const unchanged = await assertValidSvidVolume(volume.targetPath, SPIFFE_ID);
    assert.equal(unchanged.version, before.version, 'the previous files stay while the write fails');
    assert.equal(unchanged.leaf.serialNumber, before.leaf.serialNumber);

    const subscriptions = h.agent.receivedSelectorSets().length;
    const failedAt = Date.now();
    await fs.rm(filler);
    // The filler goes right after the first failure, so the next retry comes
    // within 1 s (2 s if one more attempt failed in between): 10 s is ample.
    const landed = await eventually(
      'the rotated SVID to land after the filler was removed',
      async () => {
        const now = await readVolume(volume.targetPath);
        return now.leaf.serialNumber !== before.leaf.serialNumber ? now : undefined;
      },
      10_000,
    );
    const tookMs = Date.now() - failedAt;
    assert.equal(h.agent.receivedSelectorSets().length, subscriptions, 'no new subscription: the retry used the material it already had');
    await assertValidSvidVolume(volume.targetPath, SPIFFE_ID);
    assert.notEqual(landed.version, before.version);

    // Metrics: counted by errno while failing, the volume off the gauge once written.
    assert.match(whileFailing.failures, /^# HELP spire_csi_volume_write_failures_total \S/m);
    assert.match(whileFailing.failures, /^spire_csi_volume_write_failures_total\{reason="ENOSPC"\} [1-9]\d*$/m);
    assert.match(whileFailing.failing, /^spire_csi_volumes_write_failing 1$/m);
    await eventually('the gauge to drop to 0', async () => /^spire_csi_volumes_write_failing 0$/m.test(await metricText(h, FAILING)));

    // Logs: an error for the first failure, with the errno and the retry delay,
    // then the recovery at info with the number of failed attempts.
    const entries = h.logs.entries();
    const first = entries.find((e) => e['msg'] === 'writing the SVID files failed; retrying with backoff until they are written');
    assert.ok(first, `first failure logged; logs:\n${h.logs.text()}`);
    assert.equal(first['level'], 'error');
    assert.equal(first['code'], 'ENOSPC');
    assert.equal(first['attempt'], 1);
    assert.equal(typeof first['retry_in_ms'], 'number');
    assert.match(String(first['err']), /ENOSPC/);
    const recovered = entries.find((e) => e['msg'] === 'SVID files written after failed attempts; no longer retrying');
    assert.ok(recovered, 'recovery logged');
    assert.equal(recovered['level'], 'info');
    assert.ok(Number(recovered['failed_attempts']) >= 1);
    assert.ok(tookMs < 10_000, `landed ${tookMs} ms after space was freed`);

    await h.kubelet.unpublish(volume);
  });
});
