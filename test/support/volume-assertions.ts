/** Reads a published volume the way a workload would and checks what it holds. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface VolumeContent {
  certPem: string;
  keyPem: string;
  bundlePem: string;
  leaf: X509Certificate;
  /** Target of the ..data link. */
  version: string;
}

export const DEFAULT_NAMES = { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' };

export async function readVolume(targetPath: string, names = DEFAULT_NAMES): Promise<VolumeContent> {
  const [certPem, keyPem, bundlePem, version] = await Promise.all([
    fs.readFile(path.join(targetPath, names.cert), 'utf8'),
    fs.readFile(path.join(targetPath, names.key), 'utf8'),
    fs.readFile(path.join(targetPath, names.bundle), 'utf8'),
    fs.readlink(path.join(targetPath, '..data')),
  ]);
  return { certPem, keyPem, bundlePem, leaf: new X509Certificate(certPem), version };
}

/**
 * The "done when" of the driver issue: `openssl verify -CAfile bundle cert`
 * succeeds, the URI SAN is the expected SPIFFE ID, and the key matches.
 */
export async function assertValidSvidVolume(targetPath: string, spiffeId: string, names = DEFAULT_NAMES): Promise<VolumeContent> {
  const content = await readVolume(targetPath, names);
  const { stdout } = await execFileAsync('openssl', ['verify', '-CAfile', path.join(targetPath, names.bundle), path.join(targetPath, names.cert)]);
  assert.match(stdout, /: OK/);
  assert.equal(content.leaf.subjectAltName, `URI:${spiffeId}`);
  assert.ok(content.leaf.checkPrivateKey(createPrivateKey(content.keyPem)), 'the key matches the certificate');
  assert.match(content.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
  return content;
}

export async function pathExists(target: string): Promise<boolean> {
  try {
    await fs.lstat(target);
    return true;
  } catch {
    return false;
  }
}
