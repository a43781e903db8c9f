/**
 * Where the end-to-end tests find the real tools (spire-server, spire-agent,
 * csi-sanity): the environment, else the pinned builds e2e/setup installs.
 * And spiffe-helper for the side-by-side benchmark, built on first use.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { PACKAGE_ROOT } from '../../src/package-root.js';
import { isExecutable, pinnedToolPath, toolsDir } from '../../test/support/tools.js';

const execFileAsync = promisify(execFile);

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

/**
 * spiffe-helper, the sidecar the side-by-side benchmark (bench/side-by-side.ts)
 * compares the driver with. Pinned like the SPIRE tools, and built the same
 * way into the same tool cache, but on demand by the benchmark rather than by
 * e2e/setup (no test needs it).
 */
export const SPIFFE_HELPER_VERSION = 'v0.11.0';
const SPIFFE_HELPER_PACKAGE = 'github.com/spiffe/spiffe-helper/cmd/spiffe-helper';

/** `go` on PATH, else where the official tarball installs it (as e2e/setup looks). */
function goCommand(env: NodeJS.ProcessEnv): string {
  const onPath = (env['PATH'] ?? '').split(path.delimiter).some((dir) => dir !== '' && isExecutable(path.join(dir, 'go')));
  return onPath || !isExecutable('/usr/local/go/bin/go') ? 'go' : '/usr/local/go/bin/go';
}

/**
 * The spiffe-helper binary: $SPIFFE_HELPER_BIN, else the pinned build in the
 * tool cache, built first if it is not there (`progress` says what is going on;
 * a failed build throws with the reason and the log's path).
 *
 * The route is e2e/setup's for SPIRE: `go install …@v0.11.0` fails because the
 * module proxy refuses github.com/spiffe/spiffe-helper's version list (403),
 * which `go install` reads for the module's deprecation notice; `go get -tool`
 * into a throw-away module under $TOOLS/src, then `go install` from inside it,
 * needs only the pinned version.
 */
export async function spiffeHelperBinary(progress: (line: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const fromEnv = env['SPIFFE_HELPER_BIN'];
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!isExecutable(fromEnv)) throw new Error(`$SPIFFE_HELPER_BIN=${fromEnv} is missing or not executable`);
    return fromEnv;
  }
  const final = pinnedToolPath('spiffe-helper', SPIFFE_HELPER_VERSION, env);
  if (isExecutable(final)) return final;

  const tools = toolsDir(env);
  const moduleDir = path.join(tools, 'src', `spiffe-helper-${SPIFFE_HELPER_VERSION}`);
  const logFile = path.join(tools, 'logs', `spiffe-helper-${SPIFFE_HELPER_VERSION}.log`);
  const gobin = `${path.dirname(final)}.tmp.${process.pid}`;
  fs.mkdirSync(moduleDir, { recursive: true });
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  fs.rmSync(gobin, { recursive: true, force: true });
  fs.mkdirSync(gobin, { recursive: true });
  fs.writeFileSync(logFile, '');
  progress(`building spiffe-helper ${SPIFFE_HELPER_VERSION} into ${final} (Go module proxy, log: ${logFile}) …`);
  const started = Date.now();
  // No go.work or GOFLAGS=-mod=vendor from the caller's environment; a static binary, as the release images ship.
  const goEnv = { ...env, GOWORK: 'off', CGO_ENABLED: '0', GOBIN: gobin };
  const go = async (args: string[]): Promise<void> => {
    fs.appendFileSync(logFile, `+ go ${args.join(' ')}\n`);
    try {
      const { stdout, stderr } = await execFileAsync(goCommand(env), args, { cwd: moduleDir, env: goEnv, maxBuffer: 64 * 1024 * 1024 });
      fs.appendFileSync(logFile, stdout + stderr);
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string; code?: string | number; message: string };
      fs.appendFileSync(logFile, `${e.stdout ?? ''}${e.stderr ?? ''}`);
      fs.rmSync(gobin, { recursive: true, force: true });
      if (e.code === 'ENOENT')
        throw new Error(`building spiffe-helper needs Go (>= 1.25.3, its go directive) on PATH; none found. Or set SPIFFE_HELPER_BIN.`, {
          cause: err,
        });
      const output = `${e.stderr ?? ''}${e.stdout ?? ''}`;
      const refused = output.split('\n').filter((line) => /403 Forbidden|404 Not Found|not available/.test(line));
      const reason =
        refused.length > 0
          ? `the Go module proxy refused:\n    ${refused.slice(0, 3).join('\n    ')}`
          : output.trim().split('\n').slice(-10).join('\n    ');
      throw new Error(`building spiffe-helper ${SPIFFE_HELPER_VERSION} failed at \`go ${args.join(' ')}\`: ${reason}\n  full log: ${logFile}`, {
        cause: err,
      });
    }
  };
  if (!fs.existsSync(path.join(moduleDir, 'go.mod'))) await go(['mod', 'init', 'spire-csi-driver-e2e-tools/spiffe-helper']);
  await go(['get', '-tool', `${SPIFFE_HELPER_PACKAGE}@${SPIFFE_HELPER_VERSION}`]);
  // The release's linker flags (its Makefile: symbols stripped, the tag stamped in for -version).
  await go(['install', '-ldflags', `-s -w -X github.com/spiffe/spiffe-helper/pkg/version.gittag=${SPIFFE_HELPER_VERSION}`, SPIFFE_HELPER_PACKAGE]);
  const built = path.join(gobin, 'spiffe-helper');
  if (!isExecutable(built)) throw new Error(`go install left no ${built}; log: ${logFile}`);
  fs.mkdirSync(path.dirname(final), { recursive: true });
  fs.renameSync(built, final);
  fs.rmSync(gobin, { recursive: true, force: true });
  progress(`built spiffe-helper ${SPIFFE_HELPER_VERSION} in ${Math.round((Date.now() - started) / 1000)} s`);
  return final;
}
