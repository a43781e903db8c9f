/**
 * docs/design.md invariant 8: private keys and service-account tokens never reach a
 * log line; log lines carry the stable keys operators search by.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { createLogger } from '../../src/observability/logger.js';
import { Harness, LogCapture } from '../support/driver-harness.js';
import { isServiceError } from '../support/kubelet-simulator.js';
import { readVolume } from '../support/volume-assertions.js';

describe('logs', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ publishTimeoutMs: 1000 });
  });
  after(async () => {
    await h.close();
  });

  it('never contain key material, secrets or service-account tokens, and use stable keys', async () => {
    const token = 'eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXBheWxvYWQ.c2lnbmF0dXJlLXNlY3JldA';
    const secret = 'node-publish-secret-value-7f3a';
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/logged', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const request = h.kubelet.publishRequest(pod);
    request.secrets = { password: secret };
    request.volume_context['csi.storage.k8s.io/serviceAccount.tokens'] = JSON.stringify({
      '': { token, expirationTimestamp: '2030-01-01T00:00:00Z' },
    });
    const volume = await h.kubelet.sendPublish(request);
    const { keyPem } = await readVolume(volume.targetPath);
    const entryId = h.agent.listEntries().at(-1)?.id as string;
    await h.agent.rotateSvids(entryId);

    // A failing publish with the same secrets (logged as a warning) must not leak them either.
    const failing = h.kubelet.publishRequest(h.kubelet.createPod());
    failing.secrets = { password: secret };
    failing.volume_context['csi.storage.k8s.io/serviceAccount.tokens'] = JSON.stringify({ '': { token } });
    await assert.rejects(h.kubelet.sendPublish(failing), (err) => isServiceError(err) && err.code === grpc.status.DEADLINE_EXCEEDED);
    await h.kubelet.unpublish(volume);

    const text = h.logs.text();
    const keyBody = keyPem.split('\n').slice(1, -2).join('');
    assert.ok(keyBody.length > 100);
    for (const line of keyBody.match(/.{1,40}/g) ?? []) assert.equal(text.includes(line), false, 'no fragment of the private key');
    assert.equal(text.includes('PRIVATE KEY'), false);
    assert.equal(text.includes(token), false, 'no token');
    assert.equal(text.includes('c2VjcmV0LXRva2VuLXBheWxvYWQ'), false, 'no token payload');
    assert.equal(text.includes(secret), false, 'no secret');

    const entries = h.logs.entries();
    const written = entries.find((e) => e['msg'] === 'SVID files written');
    assert.ok(written, 'a line per write');
    assert.equal(written['volume_id'], volume.volumeId);
    assert.equal(written['pod'], `${pod.namespace}/${pod.name}`);
    assert.equal(written['spiffe_id'], 'spiffe://example.org/logged');
    assert.equal(typeof written['time'], 'string');
    assert.equal(written['level'], 'info');
  });

  it('every failed call is logged once, where all calls pass: method, code, volume, pod, duration, err', async () => {
    const mark = h.logs.lines.length;
    const pod = h.kubelet.createPod();
    const request = h.kubelet.publishRequest(pod);
    request.volume_context['csi.spire.io/no-such-attribute'] = 'x';
    await assert.rejects(h.kubelet.sendPublish(request), (err) => isServiceError(err) && err.code === grpc.status.INVALID_ARGUMENT);
    // NodeUnpublishVolume failures were not logged at all before.
    await assert.rejects(
      h.kubelet.nodeCall('NodeUnpublishVolume', { volume_id: request.volume_id, target_path: '' }),
      (err) => isServiceError(err) && err.code === grpc.status.INVALID_ARGUMENT,
    );

    const failed = h.logs
      .entries()
      .slice(mark)
      .filter((e) => typeof e['msg'] === 'string' && / failed$/.test(e['msg']));
    assert.deepEqual(
      failed.map((e) => [e['msg'], e['method'], e['code'], e['level']]),
      [
        ['NodePublishVolume failed', 'NodePublishVolume', 'INVALID_ARGUMENT', 'warn'],
        ['NodeUnpublishVolume failed', 'NodeUnpublishVolume', 'INVALID_ARGUMENT', 'warn'],
      ],
      'one line per failed call',
    );
    const [publish, unpublish] = failed as [Record<string, unknown>, Record<string, unknown>];
    assert.equal(publish['volume_id'], request.volume_id);
    assert.equal(publish['target_path'], request.target_path);
    assert.equal(publish['pod'], `${pod.namespace}/${pod.name}`);
    assert.match(String(publish['err']), /no-such-attribute/);
    assert.equal(typeof publish['duration_ms'], 'number');
    assert.equal(unpublish['volume_id'], request.volume_id);
    assert.match(String(unpublish['err']), /target_path is required/);
  });

  it('redacts key material and secrets if an object carrying them is ever logged', () => {
    const capture = new LogCapture();
    // Deliberately outside LogFields (the Logger type would refuse these keys): this is the mistake redaction guards against.
    const logger = createLogger({ level: 'info', destination: capture }) as unknown as { info(fields: object, message: string): void; flush(): void };
    logger.info(
      {
        response: { x509_svids: [{ x509_svid_key: 'KEYBYTES' }] },
        request: { secrets: { a: 'SECRETVALUE' }, volume_context: { 'csi.storage.k8s.io/serviceAccount.tokens': 'TOKENVALUE' } },
        x509_svid_key: 'TOPKEY',
      },
      'oops',
    );
    logger.flush();
    const text = capture.text();
    for (const secret of ['KEYBYTES', 'SECRETVALUE', 'TOKENVALUE', 'TOPKEY']) assert.equal(text.includes(secret), false, `${secret} redacted`);
    assert.match(text, /\[REDACTED\]/);
  });

  it('redacts nested secrets, in bindings too, prints nothing below five levels, and passes ordinary lines and errors through', () => {
    const capture = new LogCapture();
    const logger = createLogger({ level: 'info', destination: capture }) as unknown as {
      info(fields: object, message: string): void;
      error(err: Error, message: string): void;
      child(bindings: object): { info(fields: object, message: string): void };
      flush(): void;
    };
    const key = Buffer.from('RAWKEYBYTES');
    logger.info(
      { a: { b: { d: [{ keyDer: key, privateKey: 'PKCS8PEM', kept: 'visible' }] } }, e: { f: { g: { h: { i: { privateKey: 'TOODEEP' } } } } } },
      'deep',
    );
    logger
      .child({ request: { volume_context: { 'csi.storage.k8s.io/serviceAccount.tokens': 'BOUNDTOKEN', 'csi.storage.k8s.io/pod.name': 'app' } } })
      .info({}, 'bound');
    logger.info({ volume_id: 'csi-1', duration_ms: 3.2, trust_domains: ['a', 'b'], tmpfs: true }, 'ordinary');
    logger.error(new Error('the cause'), 'failed');
    logger.flush();
    const text = capture.text();
    for (const secret of ['RAWKEYBYTES', key.toString('base64'), 'PKCS8PEM', 'BOUNDTOKEN', 'TOODEEP'])
      assert.equal(text.includes(secret), false, `${secret} redacted`);
    const lines = capture.entries();
    const deep = lines.find((e) => e['msg'] === 'deep') as { a: { b: { d: Record<string, unknown>[] } }; e: { f: { g: { h: unknown } } } };
    assert.deepEqual(deep.a.b.d, [{ keyDer: '[REDACTED]', privateKey: '[REDACTED]', kept: 'visible' }]);
    assert.deepEqual(deep.e.f.g.h, { i: '[Object]' }, 'below five levels nothing is printed');
    const bound = lines.find((e) => e['msg'] === 'bound') as { request: { volume_context: Record<string, string> } };
    assert.deepEqual(bound.request.volume_context, {
      'csi.storage.k8s.io/serviceAccount.tokens': '[REDACTED]',
      'csi.storage.k8s.io/pod.name': 'app',
    });
    const ordinary = lines.find((e) => e['msg'] === 'ordinary');
    assert.deepEqual(
      { ...ordinary, time: undefined },
      { level: 'info', time: undefined, volume_id: 'csi-1', duration_ms: 3.2, trust_domains: ['a', 'b'], tmpfs: true, msg: 'ordinary' },
    );
    const failed = lines.find((e) => e['msg'] === 'failed') as { err?: Record<string, unknown> };
    assert.equal(failed.err?.['message'], 'the cause');
    assert.equal(failed.err?.['type'], 'Error');
    assert.match(String(failed.err?.['stack']), /the cause/);
  });

  it('redacts secrets on Errors, behind toJSON and in cycles, never prints bytes, and bounds what a mistaken object prints', () => {
    const capture = new LogCapture();
    const logger = createLogger({ level: 'info', destination: capture }) as unknown as {
      info(fields: object, message: string): void;
      error(err: Error, message: string): void;
      flush(): void;
    };
    const withSecrets = Object.assign(new Error('agent call failed'), { keyDer: 'ERRKEY', request: { secrets: { p: 'ERRSECRET' } } });
    logger.error(withSecrets, 'top-level error');
    logger.info({ detail: { inner: withSecrets } }, 'nested error');
    class Box {
      constructor(readonly value: string) {}
      toJSON(): object {
        return { shown: 'box', privateKey: this.value };
      }
    }
    logger.info({ box: new Box('BOXSECRET') }, 'toJSON');
    const cyclic: Record<string, unknown> = { name: 'loop' };
    for (let i = 0; i < 6; i++) cyclic[`self${i}`] = cyclic;
    logger.info({ cyclic }, 'cycle');
    logger.info({ pem: Buffer.from('-----BEGIN PRIVATE KEY-----HIDDENBYTES') }, 'bytes');
    logger.info({ wide: Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`k${i}`, i])) }, 'wide');
    logger.info({ jwt: { token: 'eyJBEARER' } }, 'token');
    logger.flush();
    const text = capture.text();
    for (const secret of ['ERRKEY', 'ERRSECRET', 'BOXSECRET', 'HIDDENBYTES', 'eyJBEARER'])
      assert.equal(text.includes(secret), false, `${secret} redacted`);
    const byMessage = (msg: string): Record<string, unknown> => capture.entries().find((e) => e['msg'] === msg) as Record<string, unknown>;
    const top = byMessage('top-level error')['err'] as Record<string, unknown>;
    assert.deepEqual(
      [top['message'], top['keyDer'], (top['request'] as Record<string, unknown>)['secrets']],
      ['agent call failed', '[REDACTED]', '[REDACTED]'],
    );
    const nested = (byMessage('nested error')['detail'] as Record<string, Record<string, unknown>>)['inner'];
    assert.deepEqual([nested?.['message'], nested?.['keyDer']], ['agent call failed', '[REDACTED]']);
    assert.deepEqual(byMessage('toJSON')['box'], { shown: 'box', privateKey: '[REDACTED]' });
    const cycle = byMessage('cycle')['cyclic'] as Record<string, unknown>;
    assert.deepEqual([cycle['name'], cycle['self0']], ['loop', '[Circular]']);
    assert.ok(text.length < 20_000, `a mistaken object prints a bounded line, not ${text.length} characters`);
    assert.equal(byMessage('bytes')['pem'], '[38 bytes]');
    assert.equal(Object.keys(byMessage('wide')['wide'] as object).length, 100);
  });
});
