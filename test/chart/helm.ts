/**
 * Finding and running the helm binary for the chart tests.
 *
 * Where helm comes from, in order: $HELM_BIN; the pinned build that `e2e/setup helm`
 * installs (helm v3.21.4 under ${SPIRE_CSI_TOOLS:-${XDG_CACHE_HOME:-~/.cache}/spire-csi-driver/tools});
 * `helm` on PATH.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parseDocument, type YamlValue } from './yaml.js';
import { isExecutable, pinnedToolPath } from '../support/tools.js';

export const HELM_VERSION = 'v3.21.4';

/** The repository root (this file is test/chart/helm.ts, compiled to dist/test/chart/helm.js). */
export const REPO_ROOT = findRepoRoot(path.dirname(fileURLToPath(import.meta.url)));
export const CHART_DIR = path.join(REPO_ROOT, 'charts', 'spire-csi-driver');

/** `helm template` needs a Kubernetes version that satisfies Chart.yaml's kubeVersion; source builds default to 1.20. */
export const KUBE_VERSION = '1.33.0';

function findRepoRoot(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'charts'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no repository root (package.json + charts/) above ${start}`);
  }
}

export type HelmLocation = { found: true; path: string; source: string } | { found: false; reason: string };

export function pinnedHelmPath(env: NodeJS.ProcessEnv = process.env): string {
  return pinnedToolPath('helm', HELM_VERSION, env);
}

export function locateHelm(env: NodeJS.ProcessEnv = process.env): HelmLocation {
  const fromEnv = env['HELM_BIN'];
  if (fromEnv !== undefined && fromEnv !== '') {
    return isExecutable(fromEnv)
      ? { found: true, path: fromEnv, source: 'HELM_BIN' }
      : { found: false, reason: `HELM_BIN=${fromEnv} is not an executable file` };
  }
  const pinned = pinnedHelmPath(env);
  if (isExecutable(pinned)) return { found: true, path: pinned, source: `pinned ${HELM_VERSION} build` };
  for (const dir of (env['PATH'] ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, 'helm');
    if (isExecutable(candidate)) return { found: true, path: candidate, source: 'PATH' };
  }
  return {
    found: false,
    reason: `helm not found: set HELM_BIN, put helm on PATH, or run \`e2e/setup helm\` (builds helm ${HELM_VERSION} into ${pinned})`,
  };
}

/** CI sets CI=true; there a missing helm is a failure, not a skip. */
export function runningInCi(env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env['CI'];
  return value !== undefined && value !== '' && value !== 'false' && value !== '0';
}

export interface HelmResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function runHelm(helm: string, args: readonly string[]): HelmResult {
  const result = spawnSync(helm, args, {
    encoding: 'utf8',
    timeout: 60_000,
    // No kubeconfig or repository state from the developer's machine leaks into the render.
    env: {
      PATH: process.env['PATH'] ?? '',
      HOME: os.tmpdir(),
      HELM_CACHE_HOME: path.join(os.tmpdir(), 'spire-csi-driver-helm', 'cache'),
      HELM_CONFIG_HOME: path.join(os.tmpdir(), 'spire-csi-driver-helm', 'config'),
      HELM_DATA_HOME: path.join(os.tmpdir(), 'spire-csi-driver-helm', 'data'),
      KUBECONFIG: '/dev/null',
    },
  });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** A file of chart values, written as JSON (which YAML reads as is). */
export function writeValuesFile(dir: string, name: string, values: unknown): string {
  const file = path.join(dir, `${name}.values.yaml`);
  fs.writeFileSync(file, JSON.stringify(values, null, 2));
  return file;
}

export interface RenderOptions {
  releaseName?: string;
  namespace?: string;
  valuesFile?: string;
  chartDir?: string;
  extraArgs?: readonly string[];
}

export function templateArgs(options: RenderOptions = {}): string[] {
  return [
    'template',
    options.releaseName ?? 'spire-csi-driver',
    options.chartDir ?? CHART_DIR,
    '--namespace',
    options.namespace ?? 'spire-csi-driver',
    '--kube-version',
    KUBE_VERSION,
    ...(options.valuesFile === undefined ? [] : ['--values', options.valuesFile]),
    ...(options.extraArgs ?? []),
  ];
}

/** Renders the chart and returns its documents; throws with helm's stderr if it fails. */
export function renderChart(helm: string, options: RenderOptions = {}): Manifest[] {
  const result = runHelm(helm, templateArgs(options));
  if (result.status !== 0) throw new Error(`helm ${templateArgs(options).join(' ')} failed (${String(result.status)}):\n${result.stderr}`);
  return parseAllDocuments(result.stdout).map((document) => {
    if (document === null || typeof document !== 'object' || Array.isArray(document)) {
      throw new Error(`helm rendered a document that is not a mapping: ${JSON.stringify(document)}`);
    }
    return document as unknown as Manifest;
  });
}

export function readYamlFile(file: string): YamlValue {
  return parseDocument(fs.readFileSync(file, 'utf8'));
}

/** The parts of Kubernetes objects the tests read; everything else stays `unknown`. */
export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}
