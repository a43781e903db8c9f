/**
 * Where the end-to-end tests find the real tools (spire-server, spire-agent,
 * csi-sanity): the environment, else the pinned builds e2e/setup installs.
 */
import fs from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/proto-loading.js';
import { isExecutable, pinnedToolPath } from '../../test/support/tools.js';

export const SETUP_SCRIPT = path.join(PACKAGE_ROOT, 'e2e', 'setup');

export interface E2eTools {
  spireServer: string;
  spireAgent: string;
  csiSanity: string;
}

const TOOL_ENV = { spireServer: 'SPIRE_SERVER_BIN', spireAgent: 'SPIRE_AGENT_BIN', csiSanity: 'CSI_SANITY_BIN' } as const;
const TOOL_NAME = { spireServer: 'spire-server', spireAgent: 'spire-agent', csiSanity: 'csi-sanity' } as const;

/** The pinned versions, read from e2e/setup so the two can never disagree. */
function pinnedVersions(): { spire: string; csiSanity: string } {
  const script = fs.readFileSync(SETUP_SCRIPT, 'utf8');
  const read = (name: string): string => {
    const match = new RegExp(`^${name}=(\\S+)$`, 'm').exec(script);
    if (!match?.[1]) throw new Error(`${SETUP_SCRIPT} no longer sets ${name}=…; update e2e/testbed/tools.ts`);
    return match[1];
  };
  return { spire: read('SPIRE_VERSION'), csiSanity: read('CSI_SANITY_VERSION') };
}

/**
 * Where the real tools are: $SPIRE_SERVER_BIN / $SPIRE_AGENT_BIN / $CSI_SANITY_BIN,
 * else the pinned builds e2e/setup installs. Never skips: a missing binary is a
 * failure that names the command to run.
 */
export function locateTools(env: NodeJS.ProcessEnv = process.env): E2eTools {
  const versions = pinnedVersions();
  const found: Partial<E2eTools> = {};
  const problems: string[] = [];
  for (const key of Object.keys(TOOL_ENV) as (keyof E2eTools)[]) {
    const fromEnv = env[TOOL_ENV[key]];
    const name = TOOL_NAME[key];
    const version = key === 'csiSanity' ? versions.csiSanity : versions.spire;
    const candidate = fromEnv !== undefined && fromEnv !== '' ? fromEnv : pinnedToolPath(name, version, env);
    if (isExecutable(candidate)) found[key] = candidate;
    else problems.push(`${name} ${version}: ${candidate} is missing or not executable${fromEnv ? ` (from $${TOOL_ENV[key]})` : ''}`);
  }
  if (problems.length > 0) {
    throw new Error(
      `the end-to-end tests need the real tools, and some are missing:\n  ${problems.join('\n  ')}\n` +
        `Build them with:  bash ${path.relative(process.cwd(), SETUP_SCRIPT) || SETUP_SCRIPT}\n` +
        '(needs Go >= 1.26.6 and gcc; ~9 minutes cold, instant afterwards), or set SPIRE_SERVER_BIN, SPIRE_AGENT_BIN and CSI_SANITY_BIN.',
    );
  }
  return found as E2eTools;
}
