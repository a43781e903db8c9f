/**
 * The real csi-sanity (kubernetes-csi/csi-test v5.4.0) against the driver
 * process, which is pointed at a real SPIRE agent.
 *
 * A node-only driver needs three things (docs/design.md fact F15):
 *  - `--ginkgo.skip='Controller Server|should remove target path|should fail
 *    when volume does not exist on the specified path'`: the controller suites
 *    call Controller RPCs unconditionally, and "should remove target path" and
 *    NodeGetVolumeStats' "does not exist on the specified path" call
 *    CreateVolume. (That case, NOT_FOUND for a live volume asked about at
 *    another path, is covered by test/integration/volume-health.test.ts.)
 *  - A controller endpoint, although the driver advertises no
 *    CONTROLLER_SERVICE: in v5.4.0 the Node Service BeforeEach calls
 *    `isControllerCapabilitySupported(EXPAND_VOLUME)` unconditionally
 *    (pkg/sanity/node.go:287), expecting ControllerGetCapabilities to succeed
 *    with a non-nil capability list, so against the driver's socket alone every
 *    Node spec fails in BeforeEach. secrets-store-csi-driver works around this
 *    with a stub controller returning one UNKNOWN capability; this test serves
 *    that stub on a separate socket (`--csi.controllerendpoint`). Given a
 *    separate controller endpoint, csi-sanity also runs the Identity specs
 *    against it, so the stub forwards csi.v1.Identity calls to the driver's
 *    socket unchanged: every Identity answer checked is the driver's.
 *  - `--csi.mountdir`/`--csi.stagingdir` that do not exist yet: csi-sanity
 *    os.Mkdir()s them before each spec.
 *
 * With that, exactly 13 specs apply (3 Identity + 10 Node: the driver
 * advertises GET_VOLUME_STATS, so three NodeGetVolumeStats specs run) and must
 * pass.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { startScenario, withDiagnostics, type Scenario } from './scenario.js';

const EXPECTED_SPECS = [
  'Identity Service GetPluginCapabilities should return appropriate capabilities',
  'Identity Service Probe should return appropriate information',
  'Identity Service GetPluginInfo should return appropriate information',
  'Node Service NodeGetCapabilities should return appropriate capabilities',
  'Node Service NodeGetInfo should return appropriate values',
  'Node Service NodePublishVolume should fail when no volume id is provided',
  'Node Service NodePublishVolume should fail when no target path is provided',
  'Node Service NodePublishVolume should fail when no volume capability is provided',
  'Node Service NodeUnpublishVolume should fail when no volume id is provided',
  'Node Service NodeUnpublishVolume should fail when no target path is provided',
  'Node Service NodeGetVolumeStats should fail when no volume id is provided',
  'Node Service NodeGetVolumeStats should fail when no volume path is provided',
  'Node Service NodeGetVolumeStats should fail when volume is not found',
].sort();

const raw = (buffer: Buffer): Buffer => buffer;

function rawMethod(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream: false,
    responseStream: false,
    requestSerialize: raw,
    requestDeserialize: raw,
    responseSerialize: raw,
    responseDeserialize: raw,
  };
}

/** ControllerGetCapabilitiesResponse { capabilities: [ { rpc: { type: UNKNOWN } } ] }, encoded by hand. */
const ONE_UNKNOWN_CAPABILITY = Buffer.from([0x0a, 0x02, 0x0a, 0x00]);

/** The stub controller endpoint described above. */
async function startControllerStub(socketPath: string, driverSocketPath: string): Promise<{ close(): Promise<void>; calls: Map<string, number> }> {
  const calls = new Map<string, number>();
  const count = (name: string): void => {
    calls.set(name, (calls.get(name) ?? 0) + 1);
  };
  const driver = new grpc.Client(`unix:${driverSocketPath}`, grpc.credentials.createInsecure());
  const server = new grpc.Server();
  server.addService(
    { ControllerGetCapabilities: rawMethod('/csi.v1.Controller/ControllerGetCapabilities') },
    {
      ControllerGetCapabilities: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        count('ControllerGetCapabilities');
        callback(null, ONE_UNKNOWN_CAPABILITY);
      },
    },
  );
  const identity: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  const forward: grpc.UntypedServiceImplementation = {};
  for (const method of ['GetPluginInfo', 'GetPluginCapabilities', 'Probe']) {
    const methodPath = `/csi.v1.Identity/${method}`;
    identity[method] = rawMethod(methodPath);
    forward[method] = (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      count(`Identity/${method}`);
      driver.makeUnaryRequest(methodPath, raw, raw, call.request, (err, response) => callback(err, response));
    };
  }
  server.addService(identity, forward);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  return {
    calls,
    async close() {
      driver.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    },
  };
}

interface GinkgoSpecReport {
  State: string;
  ContainerHierarchyTexts: string[] | null;
  LeafNodeText: string;
  Failure?: { Message?: string };
}

let s: Scenario | undefined;
before(async () => {
  s = await startScenario({ testbed: { label: 'e2e-sanity' } });
});
after(async () => {
  await s?.close();
});

describe('csi-sanity', () => {
  it('passes every spec that applies to a node-only driver, and exactly those run', async () => {
    assert.ok(s);
    const { testbed, driver } = s;
    await withDiagnostics(s, async () => {
      const dir = path.join(testbed.dir, 'sanity');
      await fs.mkdir(dir);
      const stub = await startControllerStub(path.join(dir, 'controller.sock'), driver.config.csiSocketPath);
      const report = path.join(dir, 'report.json');
      let output: string;
      let exitCode = 0;
      try {
        const args = [
          `--csi.endpoint=unix://${driver.config.csiSocketPath}`,
          `--csi.controllerendpoint=unix://${path.join(dir, 'controller.sock')}`,
          // Must not exist: csi-sanity os.Mkdir()s them before each spec.
          `--csi.mountdir=${path.join(dir, 'mount')}`,
          `--csi.stagingdir=${path.join(dir, 'staging')}`,
          '--ginkgo.skip=Controller Server|should remove target path|should fail when volume does not exist on the specified path',
          '--ginkgo.no-color',
          `--ginkgo.json-report=${report}`,
        ];
        output = await new Promise<string>((resolve) => {
          execFile(testbed.tools.csiSanity, args, { encoding: 'utf8', timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
            if (err) exitCode = typeof err.code === 'number' ? err.code : -1;
            resolve(`${stdout}${stderr}`);
          });
        });
      } finally {
        await stub.close();
      }
      const context = `\n--- csi-sanity output (tail):\n${output.trimEnd().split('\n').slice(-60).join('\n')}`;

      const ran = /Ran (\d+) of (\d+) Specs/.exec(output);
      const summary = /(SUCCESS!|FAIL!) -- (\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped/.exec(output);
      assert.ok(ran && summary, `no Ginkgo summary in the output${context}`);
      assert.equal(summary[1], 'SUCCESS!', `csi-sanity failed${context}`);
      assert.equal(exitCode, 0, `csi-sanity exit code${context}`);
      assert.equal(Number(ran[1]), EXPECTED_SPECS.length, `specs run${context}`);
      assert.equal(Number(summary[2]), EXPECTED_SPECS.length, `specs passed${context}`);
      assert.equal(Number(summary[3]), 0, `specs failed${context}`);

      const reports = JSON.parse(await fs.readFile(report, 'utf8')) as { SpecReports: GinkgoSpecReport[] }[];
      const specs = reports.flatMap((r) => r.SpecReports).filter((spec) => spec.LeafNodeText !== '');
      const name = (spec: GinkgoSpecReport): string => [...(spec.ContainerHierarchyTexts ?? []), spec.LeafNodeText].join(' ');
      const passed = specs
        .filter((spec) => spec.State === 'passed')
        .map(name)
        .sort();
      const failed = specs
        .filter((spec) => spec.State === 'failed' || spec.State === 'panicked')
        .map((spec) => `${name(spec)}: ${spec.Failure?.Message ?? ''}`);
      assert.deepEqual(failed, [], `failed specs${context}`);
      assert.deepEqual(passed, EXPECTED_SPECS, 'exactly the applicable specs ran and passed');
      assert.ok((stub.calls.get('Identity/GetPluginInfo') ?? 0) > 0, "the Identity specs reached the driver through the stub's forwarding too");
    });
  });
});
