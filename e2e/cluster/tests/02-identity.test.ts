/**
 * Scenarios: a pod gets its identity from a ClusterSPIFFEID (openssl inside the container verifies it), sees
 * rotations while it runs, two pods do mutual TLS with nothing but their volumes, and non-root pods read the key
 * only with an fsGroup.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { apply, describePod, exec, execResult, kubectlOk, waitFor, waitPodReady } from '../kube.js';
import { TRUST_DOMAIN, clusterSpiffeId, deletePod, ensureNamespace, keyMatchesLeaf, readVolumeInPod, uriSans, workloadPod } from '../fixtures.js';

const NS = 'identity';

before(async () => {
  await ensureNamespace(NS, ['app', 'frontend', 'backend']);
  await apply(
    clusterSpiffeId({
      name: 'identity-app',
      namespace: NS,
      podLabels: { app: 'identity' },
      spiffeIdTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}/pod/{{ .PodMeta.Name }}',
    }),
  );
  // Short-lived SVIDs: the agent renews at about half the TTL, so the test sees rotations within a minute.
  await apply(
    clusterSpiffeId({
      name: 'identity-rotating',
      namespace: NS,
      podLabels: { app: 'rotating' },
      spiffeIdTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/rotating',
      ttl: '40s',
    }),
  );
  await apply(
    clusterSpiffeId({
      name: 'identity-mtls',
      namespace: NS,
      podLabels: { app: 'mtls' },
      spiffeIdTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}',
    }),
  );
});

after(async () => {
  await kubectlOk(['delete', 'namespace', NS, '--wait=false']);
  await kubectlOk(['delete', 'clusterspiffeid', 'identity-app', 'identity-rotating', 'identity-mtls', '--ignore-not-found']);
});

test('identity: openssl in the container verifies the SVID against the mounted bundle; the URI SAN is the template; the key matches', async () => {
  await apply(workloadPod({ namespace: NS, name: 'app-1', serviceAccount: 'app', labels: { app: 'identity' } }));
  await waitPodReady(NS, 'app-1');
  const verify = await execResult(NS, 'app-1', [
    'openssl',
    'verify',
    '-CAfile',
    '/run/svid/svid_bundle.pem',
    '-untrusted',
    '/run/svid/svid.pem',
    '/run/svid/svid.pem',
  ]);
  assert.equal(verify.code, 0, `openssl verify failed in the pod: ${verify.stdout}${verify.stderr}`);
  assert.match(verify.stdout, /\/run\/svid\/svid\.pem: OK/);

  const san = await exec(NS, 'app-1', ['openssl', 'x509', '-in', '/run/svid/svid.pem', '-noout', '-ext', 'subjectAltName']);
  assert.match(san, new RegExp(`URI:spiffe://${TRUST_DOMAIN}/ns/${NS}/sa/app/pod/app-1\\b`));

  // The same check openssl's users run: the public key of the key file equals the certificate's.
  const fromKey = await exec(NS, 'app-1', ['openssl', 'pkey', '-in', '/run/svid/svid_key.pem', '-pubout']);
  const fromCert = await exec(NS, 'app-1', ['openssl', 'x509', '-in', '/run/svid/svid.pem', '-noout', '-pubkey']);
  assert.equal(fromKey, fromCert, 'svid_key.pem is the key of svid.pem');

  const view = await readVolumeInPod(NS, 'app-1');
  assert.deepEqual(uriSans(view.leaf), [`spiffe://${TRUST_DOMAIN}/ns/${NS}/sa/app/pod/app-1`]);
  assert.ok(keyMatchesLeaf(view));
});

test('identity: a rotation is visible inside the running pod; certificate and key always match', async () => {
  await apply(workloadPod({ namespace: NS, name: 'rotating-1', serviceAccount: 'app', labels: { app: 'rotating' } }));
  await waitPodReady(NS, 'rotating-1');
  const first = await readVolumeInPod(NS, 'rotating-1');
  assert.ok(keyMatchesLeaf(first));
  const lifetimeS = (Date.parse(first.leaf.validTo) - Date.parse(first.leaf.validFrom)) / 1000;
  assert.ok(lifetimeS <= 60, `the ClusterSPIFFEID's 40s TTL reached the SVID (lifetime ${lifetimeS}s)`);
  const serials = new Set([first.leaf.serialNumber]);
  // Read repeatedly while rotations happen: every read sees a matching pair.
  const deadline = Date.now() + 90_000;
  let reads = 0;
  while (serials.size < 3 && Date.now() < deadline) {
    const view = await readVolumeInPod(NS, 'rotating-1');
    reads++;
    assert.ok(keyMatchesLeaf(view), `read ${reads}: key does not match certificate ${view.leaf.serialNumber}`);
    serials.add(view.leaf.serialNumber);
    await sleep(500);
  }
  assert.ok(
    serials.size >= 3,
    `two rotations within 90s of a 40s SVID (saw serials ${[...serials].join(', ')} in ${reads} reads)\n${await describePod(NS, 'rotating-1')}`,
  );
});

test("identity: two pods do mutual TLS using only their mounted files and check each other's SPIFFE ID", async () => {
  const backendId = `spiffe://${TRUST_DOMAIN}/ns/${NS}/sa/backend`;
  const frontendId = `spiffe://${TRUST_DOMAIN}/ns/${NS}/sa/frontend`;
  await apply(
    workloadPod({
      namespace: NS,
      name: 'backend',
      serviceAccount: 'backend',
      labels: { app: 'mtls' },
      command: ['node', '/workload/mtls.mjs', 'server', '18443', frontendId],
    }),
  );
  await apply(workloadPod({ namespace: NS, name: 'frontend', serviceAccount: 'frontend', labels: { app: 'mtls' } }));
  await waitPodReady(NS, 'backend');
  await waitPodReady(NS, 'frontend');
  const answer = await waitFor('the backend to answer the frontend over mutual TLS', 30_000, async () => {
    const result = await execResult(NS, 'frontend', ['node', '/workload/mtls.mjs', 'client', '18443', backendId]);
    return result.code === 0 ? result.stdout : undefined;
  });
  assert.match(answer, new RegExp(`^hello ${frontendId} from ${backendId}$`, 'm'));
  assert.match(answer, new RegExp(`^server ${backendId}$`, 'm'));

  // The backend refuses a client whose SPIFFE ID is not the frontend's, even from the same trust domain.
  await apply(workloadPod({ namespace: NS, name: 'intruder', serviceAccount: 'app', labels: { app: 'mtls' } }));
  await waitPodReady(NS, 'intruder');
  const refused = await execResult(NS, 'intruder', ['node', '/workload/mtls.mjs', 'client', '18443', backendId]);
  assert.notEqual(refused.code, 0, `an SVID of another workload must be refused: ${refused.stdout}`);
  assert.match(refused.stdout + refused.stderr, /refused: you are spiffe:\/\/example\.org\/ns\/identity\/sa\/app/);
  const logs = await kubectlOk(['-n', NS, 'logs', 'backend']);
  assert.match(logs, new RegExp(`accepted ${frontendId}`));
  assert.match(logs, /refused client spiffe:\/\/example\.org\/ns\/identity\/sa\/app/);
});

test('identity: a non-root pod with an fsGroup reads its key; one without an fsGroup cannot (as documented)', async () => {
  await apply(
    workloadPod({ namespace: NS, name: 'nonroot-fsgroup', serviceAccount: 'app', labels: { app: 'identity' }, runAsUser: 1000, fsGroup: 2000 }),
  );
  await apply(workloadPod({ namespace: NS, name: 'nonroot-plain', serviceAccount: 'app', labels: { app: 'identity' }, runAsUser: 1000 }));
  await waitPodReady(NS, 'nonroot-fsgroup');
  await waitPodReady(NS, 'nonroot-plain');

  const withGroup = await execResult(NS, 'nonroot-fsgroup', ['sh', '-c', 'id -u; id -G; cat /run/svid/svid_key.pem']);
  assert.equal(withGroup.code, 0, `uid 1000 with fsGroup 2000 reads the key: ${withGroup.stderr}`);
  assert.match(withGroup.stdout, /-----BEGIN PRIVATE KEY-----/);
  const modes = await exec(NS, 'nonroot-fsgroup', ['sh', '-c', 'ls -lnL /run/svid/svid_key.pem /run/svid/svid.pem']);
  assert.match(modes, /^-rw-r----- +1 +0 +2000 .*svid_key\.pem$/m, `key 0640 root:2000:\n${modes}`);

  const withoutGroup = await execResult(NS, 'nonroot-plain', ['cat', '/run/svid/svid_key.pem']);
  assert.notEqual(withoutGroup.code, 0, 'uid 1000 without an fsGroup must not read the key');
  assert.match(withoutGroup.stderr, /Permission denied/);
  // The certificate and bundle stay readable: they are public.
  const cert = await execResult(NS, 'nonroot-plain', ['cat', '/run/svid/svid.pem']);
  assert.equal(cert.code, 0, cert.stderr);

  for (const name of ['nonroot-fsgroup', 'nonroot-plain']) await deletePod(NS, name);
});
