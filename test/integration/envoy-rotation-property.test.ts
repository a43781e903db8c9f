/**
 * Property test for the Envoy case (docs/design.md invariant 4): readers
 * that load the certificate and key through the visible names the way Envoy's
 * file SDS does never accept a mismatched pair, however often the
 * AtomicWriter rotates underneath them.
 *
 * The reader mimics SdsApi::onWatchUpdate
 * (https://github.com/envoyproxy/envoy/blob/main/source/common/secret/sds_api.cc): read
 * every file, hash, re-read until two consecutive hashes match, at most 5
 * re-reads. A missing or torn file makes the attempt fail and the reader
 * starts over. Readers run in worker threads with synchronous reads, so they
 * genuinely race the writer on another core, as Envoy's main thread would.
 *
 * The control case proves the test can fail: a writer that renames the
 * certificate and the key separately (the per-file `tmp + rename` pattern that
 * src/fs/atomic-writer.ts explains) must be caught by the same readers.
 *
 * This file is also the worker's entry point: in a worker thread it runs the
 * reader loop instead of registering tests.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { AtomicWriter } from '../../src/fs/atomic-writer.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const CERT_NAME = 'cert.pem';
const KEY_NAME = 'key.pem';
/** A few KB, like a PEM chain and key, so a read is not a single trivial copy. */
const FILE_SIZE = 4096;
/** Envoy's MaxBoundedRetries. */
const MAX_REREADS = 5;
const READERS = 2;
const ROTATIONS = 1000;
const CONTROL_ROTATIONS = 100;

interface ReaderConfig {
  dir: string;
  /** Int32Array over a SharedArrayBuffer: [0] becomes 1 when the readers must stop. */
  stop: SharedArrayBuffer;
}

interface ReaderReport {
  /** Loads where two consecutive reads hashed the same: what Envoy would apply. */
  accepted: number;
  /** Accepted loads whose certificate and key carry different generations. */
  mismatched: number;
  mismatchSamples: string[];
  /** Loads that never stabilised within MAX_REREADS re-reads. */
  unstable: number;
  /** Single attempts that hit a missing file (ENOENT). */
  missing: number;
  /** Single attempts that read a file of the wrong size or with head and tail from different generations. */
  torn: number;
  /**
   * Single reads whose certificate and key came from different generations
   * (the two opens straddled a swap) and that the re-read then discarded.
   * Shows the race window was really exercised.
   */
  straddled: number;
  /** Distinct generations among accepted loads: shows the readers really raced the rotations. */
  generationsSeen: number;
}

/** `<kind>: gen=N` at the head and `end <kind> gen=N` at the tail, padded to FILE_SIZE. */
function fileContent(kind: 'cert' | 'key', generation: number): Buffer {
  const head = `${kind}: gen=${generation}\n`;
  const tail = `\nend ${kind} gen=${generation}\n`;
  return Buffer.from(head + 'x'.repeat(FILE_SIZE - head.length - tail.length) + tail);
}

/** The generation a file encodes, or undefined when it is torn. */
function generationOf(kind: 'cert' | 'key', data: Buffer): number | undefined {
  if (data.length !== FILE_SIZE) return undefined;
  const text = data.toString('latin1');
  const head = new RegExp(`^${kind}: gen=(\\d+)\\n`).exec(text);
  const tail = new RegExp(`\\nend ${kind} gen=(\\d+)\\n$`).exec(text);
  if (!head || !tail || head[1] !== tail[1]) return undefined;
  return Number(head[1]);
}

function emptyReport(): ReaderReport {
  return { accepted: 0, mismatched: 0, mismatchSamples: [], unstable: 0, missing: 0, torn: 0, straddled: 0, generationsSeen: 0 };
}

function runReader(config: ReaderConfig): ReaderReport {
  const stop = new Int32Array(config.stop);
  const certPath = path.join(config.dir, CERT_NAME);
  const keyPath = path.join(config.dir, KEY_NAME);
  const report = emptyReport();
  const generations = new Set<number>();

  while (Atomics.load(stop, 0) === 0) {
    let previousHash: string | undefined;
    let stable: { cert: Buffer; key: Buffer } | undefined;
    for (let read = 0; read <= MAX_REREADS && stable === undefined; read++) {
      let cert: Buffer;
      let key: Buffer;
      try {
        cert = readFileSync(certPath);
        key = readFileSync(keyPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        report.missing++;
        previousHash = undefined;
        continue;
      }
      const certGeneration = generationOf('cert', cert);
      const keyGeneration = generationOf('key', key);
      if (certGeneration === undefined || keyGeneration === undefined) {
        report.torn++;
        previousHash = undefined;
        continue;
      }
      const hash = createHash('sha256').update(cert).update(key).digest('hex');
      if (hash === previousHash) stable = { cert, key };
      else if (certGeneration !== keyGeneration) report.straddled++;
      previousHash = hash;
    }
    if (stable === undefined) {
      report.unstable++;
      continue;
    }
    report.accepted++;
    const certGeneration = generationOf('cert', stable.cert);
    const keyGeneration = generationOf('key', stable.key);
    if (certGeneration !== undefined) generations.add(certGeneration);
    if (certGeneration !== keyGeneration) {
      report.mismatched++;
      const sample = `cert gen=${certGeneration} with key gen=${keyGeneration}`;
      if (report.mismatchSamples.length < 5 && !report.mismatchSamples.includes(sample)) report.mismatchSamples.push(sample);
    }
  }
  report.generationsSeen = generations.size;
  return report;
}

if (!isMainThread) {
  parentPort?.postMessage(runReader(workerData as ReaderConfig));
} else {
  let scratch: string;
  before(async () => {
    scratch = await makeScratchDir('envoy-rotation');
  });
  after(async () => {
    await removeScratchDir(scratch);
  });

  /** Starts the readers on `dir`, runs `rotate`, stops the readers and sums their reports. */
  async function observe(dir: string, rotate: () => Promise<void>): Promise<ReaderReport & { rotateMs: number }> {
    const stop = new SharedArrayBuffer(4);
    const workers = Array.from({ length: READERS }, () => new Worker(new URL(import.meta.url), { workerData: { dir, stop } satisfies ReaderConfig }));
    const reports = workers.map(
      (worker) =>
        new Promise<ReaderReport>((resolve, reject) => {
          worker.once('message', (report: ReaderReport) => resolve(report));
          worker.once('error', reject);
          worker.once('exit', (code) => reject(new Error(`reader exited with code ${code} before reporting`)));
        }),
    );
    // Let the workers load and start reading before the first rotation.
    await sleep(200);
    const started = performance.now();
    try {
      await rotate();
    } finally {
      Atomics.store(new Int32Array(stop), 0, 1);
    }
    const rotateMs = performance.now() - started;
    const all = await Promise.all(reports);
    const total = emptyReport();
    for (const report of all) {
      total.accepted += report.accepted;
      total.mismatched += report.mismatched;
      total.mismatchSamples.push(...report.mismatchSamples);
      total.unstable += report.unstable;
      total.missing += report.missing;
      total.torn += report.torn;
      total.straddled += report.straddled;
      total.generationsSeen = Math.max(total.generationsSeen, report.generationsSeen);
    }
    return { ...total, rotateMs };
  }

  test(`readers never accept a mismatched cert/key pair across ${ROTATIONS} AtomicWriter rotations`, async (t) => {
    const dir = path.join(scratch, 'atomic');
    await fs.mkdir(dir);
    const writer = new AtomicWriter(dir);
    const payload = (generation: number) => [
      { name: CERT_NAME, data: fileContent('cert', generation), mode: 0o644 },
      { name: KEY_NAME, data: fileContent('key', generation), mode: 0o600 },
    ];
    await writer.write(payload(0));

    const result = await observe(dir, async () => {
      for (let generation = 1; generation <= ROTATIONS; generation++) {
        const { changed } = await writer.write(payload(generation));
        assert.equal(changed, true);
      }
    });
    t.diagnostic(`atomic writer: ${JSON.stringify(result)}`);

    assert.equal(result.mismatched, 0, `mismatched pairs accepted: ${result.mismatchSamples.join('; ')}`);
    assert.equal(result.torn, 0, 'no reader ever saw a partly written file');
    // The readers must have been busy throughout, or the property says nothing.
    assert.ok(result.accepted >= ROTATIONS, `readers accepted only ${result.accepted} loads`);
    assert.ok(result.generationsSeen >= ROTATIONS / 10, `readers saw only ${result.generationsSeen} generations`);
    assert.deepEqual(await writer.readCurrent(CERT_NAME), fileContent('cert', ROTATIONS));
    assert.equal((await fs.readdir(dir)).filter((e) => e.startsWith('..') && e !== '..data').length, 1, 'one version dir remains');
  });

  test(`control: per-file renames are caught by the same readers (${CONTROL_ROTATIONS} rotations)`, async (t) => {
    const dir = path.join(scratch, 'per-file');
    await fs.mkdir(dir);
    // The broken pattern: each file is replaced on its own with tmp + rename.
    // Each rename is atomic for its file, but not for the pair.
    const replace = async (name: string, data: Buffer): Promise<void> => {
      const tmp = path.join(dir, `.${name}.tmp`);
      await fs.writeFile(tmp, data, { mode: 0o600 });
      await fs.rename(tmp, path.join(dir, name));
    };
    await replace(CERT_NAME, fileContent('cert', 0));
    await replace(KEY_NAME, fileContent('key', 0));

    const result = await observe(dir, async () => {
      for (let generation = 1; generation <= CONTROL_ROTATIONS; generation++) {
        await replace(CERT_NAME, fileContent('cert', generation));
        await sleep(1); // the tiny gap any real writer has between two files
        await replace(KEY_NAME, fileContent('key', generation));
      }
    });
    t.diagnostic(`per-file renames: ${JSON.stringify(result)}`);

    assert.ok(result.accepted > 0, 'the readers ran');
    assert.ok(result.mismatched > 0, 'the readers must catch a new cert paired with the old key; otherwise the property test proves nothing');
  });
}
