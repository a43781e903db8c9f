import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/**
 * A fresh directory for one test. Not under /tmp: the driver refuses a state
 * directory there (systemd-tmpfiles wipes it, cert-manager/csi-lib#18), and a
 * CI clone may itself live under /tmp, so the repository is no place either.
 * Override the base with SPIRE_CSI_SCRATCH.
 */
export async function makeScratchDir(label: string): Promise<string> {
  const base =
    process.env['SPIRE_CSI_SCRATCH'] ?? path.join(process.env['XDG_CACHE_HOME'] ?? path.join(os.homedir(), '.cache'), 'spire-csi-driver', 'scratch');
  await fs.mkdir(base, { recursive: true });
  return fs.mkdtemp(path.join(base, `${label}-`));
}

export async function removeScratchDir(dir: string): Promise<void> {
  await fs.rm(dir, { recursive: true, force: true });
}
