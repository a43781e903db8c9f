/**
 * Shared pieces of the end-to-end scenarios: a real SPIRE testbed plus the
 * driver process, failure messages that carry the logs of all three, and
 * waits for what the agent pushes (rotations, bundle changes).
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { isServiceError } from '../test/support/kubelet-simulator.js';
import { readVolume, type VolumeContent } from '../test/support/volume-assertions.js';
import { DriverUnderTest, type DriverUnderTestOptions } from './e2e-driver.js';
import { SpireTestbed, splitPem, waitFor, type SpireTestbedOptions } from './spire-testbed.js';

export interface Scenario {
  testbed: SpireTestbed;
  driver: DriverUnderTest;
  close(): Promise<void>;
  /** Driver output and SPIRE logs, for a failure message. */
  diagnostics(): string;
}

/** Starts SPIRE and the driver; on failure tears down what was started. */
export async function startScenario(
  options: { testbed?: SpireTestbedOptions; driver?: Omit<DriverUnderTestOptions, 'dir' | 'adminSocketPath'> } = {},
): Promise<Scenario> {
  const testbed = await SpireTestbed.start(options.testbed);
  let driver: DriverUnderTest;
  try {
    driver = await DriverUnderTest.start({ dir: path.join(testbed.dir, 'driver'), adminSocketPath: testbed.adminSocketPath, ...options.driver });
  } catch (err) {
    await testbed.close();
    throw err;
  }
  return {
    testbed,
    driver,
    async close() {
      try {
        await driver.close();
      } finally {
        await testbed.close();
      }
    },
    diagnostics() {
      return `${driver.outputTail(40)}\n${testbed.diagnostics(20)}`;
    },
  };
}

/**
 * Runs a test body and, if it fails, appends the driver's and SPIRE's logs to
 * the error, since a timeout alone says little about which of the three
 * processes went wrong.
 */
export async function withDiagnostics(scenario: Scenario | undefined, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    if (scenario && err instanceof Error) err.message += `\n${scenario.diagnostics()}`;
    throw err;
  }
}

/** An `assert.rejects` validator for a gRPC error with this code and message parts. */
export function expectGrpcError(code: grpc.status, ...messageParts: (string | RegExp)[]): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isServiceError(err), `expected a gRPC error, got ${String(err)}`);
    assert.equal(grpc.status[err.code], grpc.status[code], `code of: ${err.details}`);
    for (const part of messageParts) {
      if (typeof part === 'string') assert.ok(err.details.includes(part), `message lacks "${part}": ${err.details}`);
      else assert.match(err.details, part);
    }
    return true;
  };
}

/** Waits until the volume holds an SVID with another serial than `previous`; returns the new content. */
export async function waitForNewSerial(
  targetPath: string,
  previous: VolumeContent,
  timeoutMs: number,
  what = 'a rotated SVID',
): Promise<VolumeContent> {
  return waitFor(
    `${what} in ${targetPath} (serial was ${previous.leaf.serialNumber})`,
    async () => {
      const now = await readVolume(targetPath);
      return now.leaf.serialNumber !== previous.leaf.serialNumber ? now : undefined;
    },
    { timeoutMs, intervalMs: 100 },
  );
}

export function bundleCertificates(content: VolumeContent): X509Certificate[] {
  return splitPem(content.bundlePem).map((pem) => new X509Certificate(pem));
}

/** The `..<timestamp>` version directories at the volume root. */
export async function versionDirectories(targetPath: string): Promise<string[]> {
  return (await fs.readdir(targetPath)).filter((name) => name.startsWith('..') && name !== '..data').sort();
}
