/**
 * The SPIRE deployment the testbed runs: its trust domain and identities, the
 * layout of its scratch directory, and server.conf / agent.conf rendered from
 * the templates in e2e/spire/.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/package-root.js';

export const TRUST_DOMAIN = 'example.org';
export const NODE_SPIFFE_ID = `spiffe://${TRUST_DOMAIN}/node`;
export const DRIVER_SPIFFE_ID = `spiffe://${TRUST_DOMAIN}/csi-driver`;
export const TEMPLATE_DIR = path.join(PACKAGE_ROOT, 'e2e', 'spire');

export type DelegateSetup =
  /** The driver's entry exists and its SPIFFE ID is in authorized_delegates (the working setup). */
  | 'registered'
  /** No entry for the driver (unix:uid:<our uid>) at all. */
  | 'no-entry'
  /** The driver has an entry, but authorized_delegates lists another SPIFFE ID. */
  | 'not-authorized';

/** What the templates leave to the testbed. */
export interface SpireSettings {
  /** server ca_ttl. */
  caTtl: string;
  /** server default_x509_svid_ttl. Also the agent's own SVID TTL. */
  defaultX509SvidTtl: string;
  /** server default_jwt_svid_ttl. */
  defaultJwtSvidTtl: string;
  delegate: DelegateSetup;
}

/** Where things are below the scratch directory `dir` (the templates expand $D to it). */
export function testbedLayout(dir: string) {
  return {
    serverSocketPath: path.join(dir, 'server', 'api.sock'),
    workloadSocketPath: path.join(dir, 'agent', 'public', 'api.sock'),
    adminSocketPath: path.join(dir, 'agent', 'admin', 'admin.sock'),
    serverDataDir: path.join(dir, 'server', 'data'),
    agentDataDir: path.join(dir, 'agent', 'data'),
    serverConfPath: path.join(dir, 'server.conf'),
    agentConfPath: path.join(dir, 'agent.conf'),
    serverLogPath: path.join(dir, 'server.log'),
    agentLogPath: path.join(dir, 'agent.log'),
  };
}

/** Writes server.conf and agent.conf for `settings` to the given paths. */
export async function renderSpireConfigs(settings: SpireSettings, to: { serverConfPath: string; agentConfPath: string }): Promise<void> {
  const serverTemplate = path.join(TEMPLATE_DIR, 'server.conf');
  const agentTemplate = path.join(TEMPLATE_DIR, 'agent.conf');
  let server = await fsp.readFile(serverTemplate, 'utf8');
  server = setHclString(server, 'ca_ttl', settings.caTtl, serverTemplate);
  server = setHclString(server, 'default_x509_svid_ttl', settings.defaultX509SvidTtl, serverTemplate);
  server = setHclString(server, 'default_jwt_svid_ttl', settings.defaultJwtSvidTtl, serverTemplate);
  let agent = await fsp.readFile(agentTemplate, 'utf8');
  if (settings.delegate === 'not-authorized') {
    agent = setHclList(agent, 'authorized_delegates', [`spiffe://${TRUST_DOMAIN}/someone-else`], agentTemplate);
  }
  await fsp.writeFile(to.serverConfPath, server);
  await fsp.writeFile(to.agentConfPath, agent);
}

/**
 * server.conf for a second, stand-alone server of another trust domain (the
 * federation test): the same template, only `trust_domain` changed; its
 * paths follow from the $D it is started with.
 */
export async function renderServerConfigForTrustDomain(trustDomain: string, to: string): Promise<void> {
  const serverTemplate = path.join(TEMPLATE_DIR, 'server.conf');
  await fsp.writeFile(to, setHclString(await fsp.readFile(serverTemplate, 'utf8'), 'trust_domain', trustDomain, serverTemplate));
}

/** Replaces one `key = "value"` line of an HCL template; throws if the template no longer has it. */
function setHclString(text: string, key: string, value: string, file: string): string {
  const pattern = new RegExp(`^(\\s*${key}\\s*=\\s*)"[^"]*"`, 'm');
  if (!pattern.test(text)) throw new Error(`${file} has no \`${key} = "…"\` line; update e2e/testbed/spire-config.ts`);
  return text.replace(pattern, `$1"${value}"`);
}

function setHclList(text: string, key: string, values: string[], file: string): string {
  const pattern = new RegExp(`^(\\s*${key}\\s*=\\s*)\\[[^\\]]*\\]`, 'm');
  if (!pattern.test(text)) throw new Error(`${file} has no \`${key} = [ … ]\` line; update e2e/testbed/spire-config.ts`);
  return text.replace(pattern, `$1[${values.map((v) => JSON.stringify(v)).join(', ')}]`);
}
