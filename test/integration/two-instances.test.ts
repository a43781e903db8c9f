/**
 * Two driver instances on one node (a rollout overlapping the old pod's
 * shutdown with the new pod's start, a second DaemonSet): the second waits for
 * the state directory lock instead of taking the CSI socket and resuming the
 * same volumes, and no instance deletes a socket it did not bind.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { DriverProcess, Harness, eventually, runningAsRoot, sleep } from '../support/driver-harness.js';
import { assertValidSvidVolume, readVolume } from '../support/volume-assertions.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function socketIdentity(socketPath: string): Promise<string> {
  const stat = await fs.lstat(socketPath);
  assert.ok(stat.isSocket(), `${socketPath} is a socket`);
  return `${stat.dev}:${stat.ino}`;
}

describe('two driver instances on one node', () => {
  it('a second instance on the same state directory and socket waits, touching nothing, and takes over once the first stops', async () => {
    h = await Harness.start({ useTmpfs: runningAsRoot() });
    const harness = h;
    const pod = harness.kubelet.createPod({ name: 'app' });
    const spiffeId = 'spiffe://example.org/app';
    await harness.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await harness.kubelet.publish(pod);
    const published = await assertValidSvidVolume(volume.targetPath, spiffeId);
    const firstSocket = await socketIdentity(harness.config.csiSocketPath);

    // The second instance: a real driver process with the same configuration.
    const second = await DriverProcess.start(harness.config);
    harness.child = second; // h.close() stops it
    const waitingLine = await eventually(
      'the second instance to log that it waits for the lock',
      () =>
        /another spire-csi-driver instance holds the state directory lock .*driver\.lock \(pid \d+ on host [^,]+, started [^)]+\); waiting for it to exit — two instances must never manage one state directory/.exec(
          second.output(),
        )?.[0],
    );
    assert.match(waitingLine, new RegExp(`\\(pid ${process.pid} on host`), 'it names the holder');

    // While it waits: the first instance keeps the socket and serves, the second opens no agent stream and
    // rewrites no file.
    await sleep(1500);
    assert.equal(second.process.exitCode, null, 'the second instance is still running (waiting)');
    assert.doesNotMatch(second.output(), /spire-csi-driver started/);
    assert.equal(await socketIdentity(harness.config.csiSocketPath), firstSocket, 'the socket is still the first instance’s');
    assert.equal(await harness.kubelet.probeReady(), true, 'kubelet still reaches the first instance');
    assert.equal(harness.agent.openSvidStreams(), 1, 'only the first instance streams the volume’s SVID');
    assert.equal(harness.agent.openBundleStreams(), 1, 'only the first instance streams bundles');
    assert.equal((await readVolume(volume.targetPath)).version, published.version, 'the volume is untouched');

    // The first instance stops (SIGTERM in a pod): the second takes the lock, resumes the volume and serves.
    await harness.driver?.stop();
    harness.driver = undefined;
    await harness.waitUntilReady(15_000);
    assert.match(second.output(), /the other instance released the state directory lock; starting/);
    assert.match(second.output(), /spire-csi-driver started/);
    await harness.agent.waitForSvidStreams(1, 5000);

    const before = await readVolume(volume.targetPath);
    await harness.agent.rotateSvids();
    await eventually(
      'rotation under the second instance',
      async () => (await readVolume(volume.targetPath)).leaf.serialNumber !== before.leaf.serialNumber,
    );
    await assertValidSvidVolume(volume.targetPath, spiffeId);
    await harness.kubelet.unpublish(volume);

    // And the second instance stops cleanly, removing the socket it bound.
    const exited = new Promise<number | null>((resolve) => second.process.once('exit', (code) => resolve(code)));
    second.process.kill('SIGTERM');
    assert.equal(await exited, 0);
    harness.child = undefined;
    await assert.rejects(fs.lstat(harness.config.csiSocketPath), { code: 'ENOENT' });
  });

  it('stopping an instance whose socket path another process has re-bound leaves that socket in place', async () => {
    h = await Harness.start();
    const socketPath = h.config.csiSocketPath;
    const ours = await socketIdentity(socketPath);
    // What an instance started on the same endpoint does: remove the file and bind its own socket there.
    await fs.unlink(socketPath);
    const other = net.createServer((connection) => connection.end('other\n'));
    await new Promise<void>((resolve, reject) => {
      other.once('error', reject);
      other.listen(socketPath, () => resolve());
    });
    try {
      const theirs = await socketIdentity(socketPath);
      assert.notEqual(theirs, ours);

      await h.stopDriver();

      assert.equal(await socketIdentity(socketPath), theirs, 'the other process’s socket is still there');
      const greeting = await new Promise<string>((resolve, reject) => {
        const client = net.createConnection(socketPath);
        client.once('error', reject);
        client.once('data', (data) => {
          resolve(data.toString());
          client.end();
        });
      });
      assert.equal(greeting, 'other\n', 'and still reachable');
      assert.match(h.logs.text(), /the CSI socket is no longer the one this instance bound: another process .* replaced it, so it is left in place/);
    } finally {
      await new Promise<void>((resolve) => other.close(() => resolve()));
    }
  });
});
