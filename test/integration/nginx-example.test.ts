/**
 * examples/nginx works as documented: the real nginx serves mutual TLS with
 * nothing but the files of a csi.spire.io volume, clients need an SVID of the
 * trust domain, and a reload after a rotation serves the new SVID. CI installs
 * nginx (Debian's package) and fails rather than skip without it.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { Harness, eventually } from '../support/driver-harness.js';
import type { PublishedVolume } from '../support/kubelet-simulator.js';
import { readVolume } from '../support/volume-assertions.js';

function nginxBinary(): string | undefined {
  for (const candidate of ['/usr/sbin/nginx', '/usr/bin/nginx']) {
    try {
      execFileSync(candidate, ['-v'], { stdio: 'ignore' });
      return candidate;
    } catch {
      // try the next
    }
  }
  return undefined;
}

const nginx = nginxBinary();
const skip = !nginx && !process.env['CI'] ? 'nginx is not installed (apt-get install nginx); CI installs it' : false;

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface HttpsAnswer {
  status: number;
  body: string;
  peerUri: string | undefined;
  peerSerial: string;
}

/** One HTTPS request with the client volume's files (or without a client certificate). */
async function request(port: number, ca: string, client: { cert: string; key: string } | undefined): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca,
      ...(client ?? {}),
      // SPIFFE: the server is authenticated by its URI SAN, not a host name.
      checkServerIdentity: () => undefined,
    });
    let data = '';
    socket.on('secureConnect', () => socket.write('GET / HTTP/1.0\r\nHost: svid\r\n\r\n'));
    socket.on('data', (chunk: Buffer) => (data += chunk.toString()));
    socket.on('error', reject);
    socket.on('end', () => {
      const peer = socket.getPeerCertificate();
      resolve({
        status: Number(/^HTTP\/1\.\d (\d{3})/.exec(data)?.[1] ?? 0),
        body: data.split('\r\n\r\n').slice(1).join('\r\n\r\n'),
        peerUri: peer.subjectaltname,
        peerSerial: peer.serialNumber,
      });
    });
  });
}

describe('examples/nginx with the real nginx', { skip }, () => {
  let h: Harness;
  let nginxProcess: ChildProcess | undefined;
  let server: PublishedVolume;
  let client: PublishedVolume;
  let serverEntry: string;
  let port: number;
  let confPath: string;
  let nginxOutput = '';

  before(async () => {
    assert.ok(nginx, 'nginx must be installed in CI (apt-get install nginx)');
    h = await Harness.start();
    const serverPod = h.kubelet.createPod({ name: 'web', serviceAccount: 'web' });
    const clientPod = h.kubelet.createPod({ name: 'client', serviceAccount: 'client' });
    serverEntry = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/web', selectors: [`k8s:pod-uid:${serverPod.uid}`] });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/client', selectors: [`k8s:pod-uid:${clientPod.uid}`] });
    server = await h.kubelet.publish(serverPod);
    client = await h.kubelet.publish(clientPod);

    // The example config as shipped, with only the paths and the port of this machine put in.
    port = await freePort();
    const prefix = path.join(h.dir, 'nginx');
    await fs.mkdir(prefix, { recursive: true });
    const shipped = await fs.readFile(path.join(PACKAGE_ROOT, 'examples', 'nginx', 'nginx.conf'), 'utf8');
    const conf = shipped
      .replaceAll('/run/svid/', `${server.targetPath}/`)
      .replace(/listen 8443 ssl;/, `listen 127.0.0.1:${port} ssl;`)
      .replaceAll('/tmp/', `${prefix}/`)
      // Under the test runner stdio is a Unix socket, which open("/dev/stderr") refuses (ENXIO).
      .replace('error_log /dev/stderr', `error_log ${prefix}/error.log`)
      .replace('access_log /dev/stdout', `access_log ${prefix}/access.log`);
    assert.notEqual(conf, shipped);
    confPath = path.join(prefix, 'nginx.conf');
    await fs.writeFile(confPath, conf);
    execFileSync(nginx, ['-t', '-q', '-p', prefix, '-c', confPath]);
    nginxProcess = spawn(nginx, ['-p', prefix, '-c', confPath, '-g', 'daemon off;'], { stdio: ['ignore', 'pipe', 'pipe'] });
    nginxProcess.stderr?.on('data', (chunk: Buffer) => (nginxOutput += chunk.toString()));
    await eventually('nginx to listen', async () => {
      try {
        await new Promise<void>((resolve, reject) => net.connect(port, '127.0.0.1', resolve).on('error', reject).end());
        return true;
      } catch {
        return false;
      }
    });
  });

  after(async () => {
    if (nginxProcess && nginxProcess.exitCode === null) {
      const exited = new Promise((resolve) => nginxProcess?.once('exit', resolve));
      nginxProcess.kill('SIGQUIT');
      await exited;
    }
    await h?.close();
  });

  it('serves mutual TLS from the volume files: the client verifies the SPIFFE ID, nginx verifies the client', async () => {
    const ca = (await readVolume(client.targetPath)).bundlePem;
    const clientFiles = await readVolume(client.targetPath);
    const answer = await request(port, ca, { cert: clientFiles.certPem, key: clientFiles.keyPem });
    assert.equal(answer.status, 200, `${nginxOutput}${await fs.readFile(path.join(path.dirname(confPath), 'error.log'), 'utf8').catch(() => '')}`);
    assert.match(answer.body, /client certificate: SUCCESS/);
    assert.equal(answer.peerUri, 'URI:spiffe://example.org/web');
  });

  it('refuses a client without an SVID', async () => {
    const ca = (await readVolume(client.targetPath)).bundlePem;
    const answer = await request(port, ca, undefined);
    assert.equal(answer.status, 400);
    assert.match(answer.body, /No required SSL certificate was sent/);
  });

  it('serves the rotated SVID after the reload that reload-on-rotation.sh performs', async () => {
    const before = await readVolume(server.targetPath);
    await h.agent.rotateSvids(serverEntry);
    await eventually('the rotated server SVID', async () => (await readVolume(server.targetPath)).version !== before.version);
    execFileSync(nginx as string, ['-p', path.dirname(confPath), '-c', confPath, '-s', 'reload']);
    const rotated = await readVolume(server.targetPath);
    const clientFiles = await readVolume(client.targetPath);
    const answer = await eventually('nginx to serve the new certificate', async () => {
      const result = await request(port, clientFiles.bundlePem, { cert: clientFiles.certPem, key: clientFiles.keyPem });
      return result.peerSerial === rotated.leaf.serialNumber ? result : undefined;
    });
    assert.equal(answer.status, 200);
  });
});
