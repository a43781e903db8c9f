/**
 * The driver image the cluster runs (built from files by e2e/cluster/images) and the Dockerfile users build must
 * agree: the same files under the working directory, the same user, working directory, entrypoint and environment.
 * Only the Node.js runtime differs (this machine's instead of the base image's), and the image has no npm.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { CLUSTER_DIR, REPO } from '../fixtures.js';

const repo = REPO;
const archive = path.join(CLUSTER_DIR, 'images', 'spire-csi-driver.tar');

interface RuntimeStage {
  workdir: string;
  user: string;
  entrypoint: string[];
  env: Record<string, string>;
  /** Destinations (relative to the working directory) of COPY instructions. */
  copies: string[];
}

/** The last stage of the Dockerfile: WORKDIR, USER, ENTRYPOINT (exec form), ENV and COPY destinations. */
function runtimeStage(dockerfile: string): RuntimeStage {
  const instructions = dockerfile
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  const lastFrom = instructions.map((l) => l.toUpperCase().startsWith('FROM ')).lastIndexOf(true);
  const stage: RuntimeStage = { workdir: '/', user: '', entrypoint: [], env: {}, copies: [] };
  for (const line of instructions.slice(lastFrom + 1)) {
    const [instruction = '', ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    switch (instruction.toUpperCase()) {
      case 'WORKDIR':
        stage.workdir = args;
        break;
      case 'USER':
        stage.user = args;
        break;
      case 'ENTRYPOINT':
        stage.entrypoint = JSON.parse(args) as string[];
        break;
      case 'ENV': {
        const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(args);
        assert.ok(match, `ENV in key=value form: ${line}`);
        stage.env[match[1] as string] = match[2] as string;
        break;
      }
      case 'COPY': {
        const parts = rest.filter((p) => !p.startsWith('--'));
        stage.copies.push(parts[parts.length - 1] as string);
        break;
      }
    }
  }
  return stage;
}

interface ImageConfig {
  architecture?: string;
  os?: string;
  config: { User?: string; WorkingDir?: string; Entrypoint?: string[]; Env?: string[] };
}

interface LockEntry {
  dev?: boolean;
  optional?: boolean;
  os?: string[];
  cpu?: string[];
  libc?: string[];
}

/** npm's os/cpu/libc fields: absent means any; "!x" excludes x; otherwise the value must be listed. */
function allows(list: string[] | undefined, value: string): boolean {
  if (list === undefined || list.length === 0) return true;
  if (list.includes(`!${value}`)) return false;
  const positives = list.filter((entry) => !entry.startsWith('!'));
  return positives.length === 0 || positives.includes(value);
}

/**
 * Whether `npm ci --omit=dev` installs a package of the lock file on the image's platform: not a dev dependency, and
 * an optional one only where its os/cpu/libc fields match (koffi's prebuilt binaries come one package per platform).
 */
function installedOn(entry: LockEntry, platform: { os: string; cpu: string; libc: string }): boolean {
  if (entry.dev === true) return false;
  if (entry.optional !== true) return true;
  return allows(entry.os, platform.os) && allows(entry.cpu, platform.cpu) && allows(entry.libc, platform.libc);
}

/** The OCI archive's config and the list of files of its (single) layer. */
function readImage(file: string): { config: ImageConfig; files: Set<string> } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'image-agreement-'));
  try {
    execFileSync('tar', ['-xf', file, '-C', dir]);
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
    const blob = (digest: string) => path.join(dir, 'blobs', 'sha256', digest.replace('sha256:', ''));
    const manifest = JSON.parse(fs.readFileSync(blob(index.manifests[0]?.digest ?? ''), 'utf8')) as {
      config: { digest: string };
      layers: { digest: string }[];
    };
    assert.equal(manifest.layers.length, 1);
    const config = JSON.parse(fs.readFileSync(blob(manifest.config.digest), 'utf8')) as ImageConfig;
    const listing = execFileSync('tar', ['-tf', blob(manifest.layers[0]?.digest ?? '')], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    const files = new Set(
      listing
        .split('\n')
        .filter((f) => f !== '' && !f.endsWith('/'))
        .map((f) => f.replace(/^\.\//, '/')),
    );
    return { config, files };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function filesUnder(root: string, dir: string): string[] {
  return fs
    .readdirSync(path.join(root, dir), { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)));
}

test("image agreement: the cluster image has the Dockerfile runtime stage's user, working dir, entrypoint, env and files", () => {
  assert.ok(fs.existsSync(archive), `${archive} is missing: e2e/cluster/images builds it`);
  const stage = runtimeStage(fs.readFileSync(path.join(repo, 'Dockerfile'), 'utf8'));
  const { config, files } = readImage(archive);

  assert.equal(config.config.User, stage.user, 'USER');
  assert.equal(config.config.WorkingDir, stage.workdir, 'WORKDIR');
  assert.deepEqual(config.config.Entrypoint, stage.entrypoint, 'ENTRYPOINT');
  const env = Object.fromEntries((config.config.Env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
  for (const [key, value] of Object.entries(stage.env)) assert.equal(env[key], value, `ENV ${key}`);

  // Every file the Dockerfile copies from the repository (or from the build stage's dist/src) is in the image.
  const inImage = (relative: string) => files.has(path.posix.join(stage.workdir, relative));
  const expected: string[] = [];
  for (const destination of stage.copies) {
    if (destination === './') expected.push('package.json', 'package-lock.json');
    else if (destination === 'dist/src/') expected.push(...filesUnder(repo, 'dist/src'));
    else expected.push(...filesUnder(repo, destination));
  }
  assert.ok(expected.length > 20, `the Dockerfile's COPY destinations were understood: ${stage.copies.join(', ')}`);
  const missing = expected.filter((f) => !inImage(f));
  assert.deepEqual(missing, [], 'files the Dockerfile copies but the image lacks');

  // No file under the working directory that the Dockerfile would not put there (only production node_modules).
  const extra = [...files]
    .filter((f) => f.startsWith(`${stage.workdir}/`))
    .map((f) => f.slice(stage.workdir.length + 1))
    .filter((f) => !expected.includes(f) && !f.startsWith('node_modules/'));
  assert.deepEqual(extra, [], 'files in the image the Dockerfile does not copy');

  // `npm ci --omit=dev`: the production dependencies for the image's platform (both images are linux/amd64 with
  // glibc: Debian's Node.js image, this machine's node), and not one dev dependency.
  const cpus: Record<string, string> = { amd64: 'x64', arm64: 'arm64' };
  const platform = { os: config.os ?? 'linux', cpu: cpus[config.architecture ?? 'amd64'] ?? String(config.architecture), libc: 'glibc' };
  const lock = JSON.parse(fs.readFileSync(path.join(repo, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  for (const [name, entry] of Object.entries(lock.packages)) {
    if (!name.startsWith('node_modules/')) continue;
    const present = inImage(`${name}/package.json`);
    const kind = entry.dev
      ? 'dev'
      : entry.optional
        ? `optional, for ${entry.os?.join('/') ?? 'any os'} ${entry.cpu?.join('/') ?? 'any cpu'}`
        : 'production';
    assert.equal(present, installedOn(entry, platform), `${name} (${kind}) ${present ? 'is' : 'is not'} in the image`);
  }
  // koffi's native binary for the image's platform, which the state directory lock (flock(2)) needs.
  const koffiBinary = `node_modules/@koromix/koffi-${platform.os}-${platform.cpu}/${platform.os}_${platform.cpu}/koffi.node`;
  assert.ok(inImage(koffiBinary), `${koffiBinary} is in the image`);
  // The runtime the entrypoint names, and mount(8)/umount(8), which the Dockerfile checks for.
  for (const binary of ['/usr/local/bin/node', '/usr/bin/mount', '/usr/bin/umount']) assert.ok(files.has(binary), binary);
});
