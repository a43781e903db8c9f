/** Where e2e/setup installs the real tools (SPIRE, csi-sanity, helm), shared by the e2e and chart tests. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** e2e/setup's install root: $SPIRE_CSI_TOOLS, else ${XDG_CACHE_HOME:-~/.cache}/spire-csi-driver/tools. */
export function toolsDir(env: NodeJS.ProcessEnv = process.env): string {
  return env['SPIRE_CSI_TOOLS'] ?? path.join(env['XDG_CACHE_HOME'] ?? path.join(os.homedir(), '.cache'), 'spire-csi-driver', 'tools');
}

/** The path e2e/setup installs `name` at for a pinned version. */
export function pinnedToolPath(name: string, version: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(toolsDir(env), `${name}-${version}`, 'bin', name);
}

export function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}
