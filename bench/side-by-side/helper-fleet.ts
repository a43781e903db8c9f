/**
 * N spiffe-helper processes (the sidecar the driver replaces) against one SPIRE
 * agent's Workload API, each in daemon mode writing an SVID, key and bundle
 * into its own directory, as N sidecars would on a node.
 *
 * Every helper runs with its own gid (first gid + i), so that the agent's unix
 * workload attestor tells them apart (`unix:gid:<gid>`) and each gets its own
 * entry and SVID, like N pods; the uid stays the benchmark's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { killOnExit } from '../../e2e/spire-testbed.js';

/** The files every helper writes (cert_dir/<name>). */
export const HELPER_FILES = ['svid.pem', 'svid_key.pem', 'svid_bundle.pem'] as const;

export interface HelperFleetOptions {
  binary: string;
  count: number;
  /** Each helper gets <dir>/helper-<i>/ for its config, log and files. */
  dir: string;
  workloadSocketPath: string;
  /** Helper i runs with gid firstGid + i. */
  firstGid: number;
}

interface Helper {
  dir: string;
  certDir: string;
  logFile: string;
  child: ChildProcess;
  exited: Promise<void>;
  forget: () => void;
}

export class HelperFleet {
  private constructor(private readonly helpers: Helper[]) {}

  /** The selectors of helper i's entry. */
  static selectorsOf(i: number, firstGid: number): string[] {
    return [`unix:gid:${firstGid + i}`];
  }

  static async start(options: HelperFleetOptions): Promise<HelperFleet> {
    const helpers: Helper[] = [];
    for (let i = 0; i < options.count; i++) {
      const dir = path.join(options.dir, `helper-${i}`);
      const certDir = path.join(dir, 'certs');
      await fsp.mkdir(certDir, { recursive: true });
      const configFile = path.join(dir, 'helper.conf');
      // The keys of spiffe-helper v0.11.0's cmd/spiffe-helper/config (unknown keys are refused).
      await fsp.writeFile(
        configFile,
        [
          `agent_address = ${JSON.stringify(options.workloadSocketPath)}`,
          `cert_dir = ${JSON.stringify(certDir)}`,
          `svid_file_name = "${HELPER_FILES[0]}"`,
          `svid_key_file_name = "${HELPER_FILES[1]}"`,
          `svid_bundle_file_name = "${HELPER_FILES[2]}"`,
          'daemon_mode = true',
          '',
        ].join('\n'),
      );
      const logFile = path.join(dir, 'helper.log');
      const log = fs.openSync(logFile, 'a');
      try {
        const child = spawn(options.binary, ['-config', configFile], { gid: options.firstGid + i, stdio: ['ignore', log, log] });
        const exited = new Promise<void>((resolve) => {
          child.once('exit', () => resolve());
          child.once('error', () => resolve());
        });
        helpers.push({ dir, certDir, logFile, child, exited, forget: killOnExit(child.pid) });
      } finally {
        fs.closeSync(log);
      }
    }
    return new HelperFleet(helpers);
  }

  get pids(): number[] {
    return this.helpers.map((h) => h.child.pid).filter((pid): pid is number => pid !== undefined);
  }

  /** How many helpers have written all their files (non-empty). */
  async written(): Promise<number> {
    const done = await Promise.all(
      this.helpers.map(async (h) => {
        const sizes = await Promise.all(
          HELPER_FILES.map((name) =>
            fsp.stat(path.join(h.certDir, name)).then(
              (s) => s.size,
              () => 0,
            ),
          ),
        );
        return sizes.every((size) => size > 0);
      }),
    );
    return done.filter(Boolean).length;
  }

  /** Throws unless helper i's svid.pem holds the SVID of `spiffeIdOf(i)`: each helper has its own identity, as a pod would. */
  async assertIdentities(spiffeIdOf: (i: number) => string): Promise<void> {
    await Promise.all(
      this.helpers.map(async (h, i) => {
        const leaf = new X509Certificate(await fsp.readFile(path.join(h.certDir, HELPER_FILES[0])));
        const expected = `URI:${spiffeIdOf(i)}`;
        if (leaf.subjectAltName !== expected) throw new Error(`spiffe-helper in ${h.dir} wrote the SVID of ${leaf.subjectAltName}, not ${expected}`);
      }),
    );
  }

  /** Throws (with its log) if a helper has exited: a helper that quit is no sidecar to measure. */
  assertAllRunning(): void {
    const gone = this.helpers.find((h) => h.child.exitCode !== null || h.child.signalCode !== null || h.child.pid === undefined);
    if (gone) {
      let log: string;
      try {
        log = fs.readFileSync(gone.logFile, 'utf8').trimEnd().split('\n').slice(-15).join('\n');
      } catch {
        log = '(no log)';
      }
      throw new Error(`spiffe-helper in ${gone.dir} exited (${gone.child.exitCode ?? gone.child.signalCode ?? 'never started'}); its log:\n${log}`);
    }
  }

  /** SIGTERM to every helper, SIGKILL to those still running after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    for (const h of this.helpers) h.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      for (const h of this.helpers) if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill('SIGKILL');
    }, graceMs);
    await Promise.all(this.helpers.map((h) => h.exited));
    clearTimeout(timer);
    for (const h of this.helpers) h.forget();
  }
}
