/**
 * One JSON file per volume in the state directory, so a restarted driver takes
 * every volume back without asking the Kubernetes API (docs/design.md invariant 6).
 * Each file is written atomically (a temp file, then rename(2)),
 * and a file that fails to parse is moved into quarantine/ with an
 * error log instead of stopping the driver — cert-manager/csi-lib fails the
 * whole node on one bad file (NewManager in
 * https://github.com/cert-manager/csi-lib/blob/main/manager/manager.go). No
 * secret is ever stored here: not the key, not the service-account tokens.
 *
 * Compatibility between driver versions (a rollback runs an older driver on
 * records a newer one wrote): a newer version only ever adds fields and keeps
 * `version: 1`; readers ignore fields they do not know. `version` changes only
 * when an older driver must not act on a record: such a record is left where
 * it is, unresumed, for the newer driver to take back after a roll-forward.
 *
 * A quarantined record leaves a tombstone (tombstones/<volumeId>): the proof
 * that the volume was ours, so NodeUnpublishVolume still removes its mount and
 * key, although nothing else about it can be read any more.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import * as z from 'zod/mini';
import '../validation.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';

/** kubelet's inline volume ids; anything else never names a file of ours. */
const VOLUME_ID = /^csi-[0-9a-f]{64}$/;

/** The only record version this driver writes and resumes. */
const RECORD_VERSION = 1;

function nonEmpty() {
  return z.string().check(z.minLength(1));
}

const volumeRecordFields = {
  version: z.literal(RECORD_VERSION),
  volumeId: z.string().check(z.regex(VOLUME_ID)),
  targetPath: z.string().check(z.startsWith('/')),
  volumeName: nonEmpty(),
  pod: z.object({
    uid: nonEmpty(),
    name: nonEmpty(),
    namespace: nonEmpty(),
    serviceAccount: nonEmpty(),
  }),
  /**
   * csi.spire.io/layout. Only for comparing a republish: the names it chose are
   * in `files`, resolved, so even a driver that does not know a layout writes
   * the right names. Any string, so a layout added later never makes this
   * version quarantine the record. Absent in records written before layouts
   * existed, which were all spiffe-helper.
   */
  layout: z.optional(nonEmpty()),
  /**
   * The names, resolved from the layout and the name attributes. The optional
   * ones were added later: a record without them has none of those files. A
   * driver older than a field drops it on reading and writes the volume
   * without that file (docs/design.md §4, "Rolling back").
   */
  files: z.object({
    cert: nonEmpty(),
    key: nonEmpty(),
    bundle: nonEmpty(),
    credentialBundle: z.optional(nonEmpty()),
    pkcs12: z.optional(nonEmpty()),
    /** With federatedBundles combined: the file of own and federated CAs. */
    combinedBundle: z.optional(nonEmpty()),
  }),
  /**
   * csi.spire.io/federated-bundles. Any string, like `layout`, so a mode added
   * later never makes this version quarantine the record (federated-bundles.ts
   * reads an unknown or absent one as the default). Which trust domains the
   * entry federates with is not recorded: the agent's first response after a
   * restart says it again.
   */
  federatedBundles: z.optional(nonEmpty()),
  /**
   * The keystore's password, with files.pkcs12: needed to write it again after
   * a restart, and not a secret (it is in the pod spec, for everyone who can
   * read the pod; the records are root's, 0600). Never logged.
   */
  pkcs12Password: z.optional(nonEmpty()),
  /**
   * csi.spire.io/jwt-audiences and jwt-bundle-file, resolved: the tokens to
   * fetch again after a restart. Absent: no JWT files. A driver older than
   * this field drops it and writes the volume without them (docs/design.md §4).
   */
  jwt: z.optional(
    z.object({
      svids: z.array(z.object({ file: nonEmpty(), audiences: z.array(nonEmpty()).check(z.minLength(1)) })).check(z.minLength(1)),
      bundleFile: nonEmpty(),
    }),
  ),
  fsGroup: z.nullable(z.int().check(z.nonnegative())),
  spiffeId: z.nullable(z.string()),
  hint: z.nullable(z.string()),
  tmpfs: z.boolean(),
  createdAt: z.string(),
};

/** What this version writes: exactly its own fields, so nothing else (a secret) can ever reach the disk. */
const volumeRecordSchema = z.strictObject(volumeRecordFields);
/** What it reads: its own fields; those a newer version added are dropped (zod strips unknown keys). */
const readableRecordSchema = z.object(volumeRecordFields);
/** Just enough of a record to tell a newer, incompatible version from a corrupt file. */
const versionOnlySchema = z.object({ version: z.int() });

export type VolumeRecord = z.infer<typeof volumeRecordSchema>;

export interface LoadedRecords {
  records: VolumeRecord[];
  /** Where the files that did not parse were moved; each left a tombstone. */
  quarantined: string[];
  /** Volume ids of records with a newer, incompatible version, left in place. */
  unsupported: string[];
}

type ParsedRecord = { kind: 'record'; record: VolumeRecord } | { kind: 'unsupported'; version: number };

/**
 * What the VolumeManager needs of the state directory's records: MetadataStore
 * implements it on disk; the unit tests use an in-memory one
 * (test/support/fakes/memory-record-store.ts, like cert-manager csi-lib's
 * storage/memory.go).
 */
export interface VolumeRecordStore {
  /** Where the records live, for messages. */
  readonly volumesDir: string;
  write(record: VolumeRecord): Promise<void>;
  /** The record of one volume, or undefined when there is none or this version cannot use it. */
  read(volumeId: string): Promise<VolumeRecord | undefined>;
  /** Forgets a volume: its record, and its tombstone. */
  remove(volumeId: string): Promise<void>;
  /** True when a record of any content or a tombstone says the volume was ours. */
  knows(volumeId: string): Promise<boolean>;
  /** Volume ids with a tombstone. */
  tombstones(): Promise<string[]>;
  /** Every usable record; quarantines those that do not parse, leaves those in a newer format. */
  loadAll(): Promise<LoadedRecords>;
}

export class MetadataStore implements VolumeRecordStore {
  readonly volumesDir: string;
  readonly quarantineDir: string;
  readonly tombstonesDir: string;

  constructor(
    stateDir: string,
    private readonly logger: Logger,
  ) {
    this.volumesDir = path.join(stateDir, 'volumes');
    this.quarantineDir = path.join(stateDir, 'quarantine');
    this.tombstonesDir = path.join(stateDir, 'tombstones');
  }

  async init(): Promise<void> {
    await fs.mkdir(this.volumesDir, { recursive: true, mode: 0o700 });
    await fs.mkdir(this.quarantineDir, { recursive: true, mode: 0o700 });
    await fs.mkdir(this.tombstonesDir, { recursive: true, mode: 0o700 });
  }

  /** Refuses ids that are not kubelet's, so a crafted volume_id can never name a path outside volumes/. */
  pathOf(volumeId: string): string {
    if (!VOLUME_ID.test(volumeId)) throw new Error(`not a volume id: ${JSON.stringify(volumeId.slice(0, 80))}`);
    return path.join(this.volumesDir, `${volumeId}.json`);
  }

  /**
   * Without fsync: the record guards against the driver dying (SIGKILL, OOM,
   * a crash), which the page cache survives; fsync only adds the machine dying,
   * and that takes every per-volume tmpfs with it, so no mount can be left
   * without its record. In plain-directory mode a record lost that way leaves
   * files NodeUnpublishVolume still recognises as ours (invariant 13). What
   * fsync cost was every publish's slowest step: 0.3 ms typically, but 10 ms
   * and more at the 99th percentile on a busy node disk.
   *
   * Not write-file-atomic, which the rare tombstone still uses: it makes ~16
   * thread-pool calls per write (a JavaScript realpath with one lstat per path
   * component, a stat, a chmod, an unlink after the rename), and each one
   * waits for a turn of the event loop. With the SPIRE agent's answer being
   * checked and written meanwhile, that was the slowest step of a publish at
   * the 99th percentile (6-18 ms then). This is four system calls, made
   * synchronously (replaceFile says why).
   * What write-file-atomic adds is not needed here: it queues writes to one
   * file, and a volume's record is only written under its volume lock; it
   * writes through a symbolic link, and the rename here replaces the name
   * itself, which in a 0700 directory of ours is what we want; it removes its
   * temp file on exit, and loadAll removes any a crash leaves.
   */
  async write(record: VolumeRecord): Promise<void> {
    const file = this.pathOf(record.volumeId);
    const contents = `${JSON.stringify(volumeRecordSchema.parse(record), null, 2)}\n`;
    replaceFile(file, `${file}.${randomBytes(6).toString('hex')}.tmp`, contents);
  }

  /** Forgets a volume: its record, and the tombstone a quarantined record left. */
  async remove(volumeId: string): Promise<void> {
    if (!VOLUME_ID.test(volumeId)) return;
    await fs.rm(this.pathOf(volumeId), { force: true });
    await fs.rm(path.join(this.tombstonesDir, volumeId), { force: true });
  }

  /** The record of one volume, or undefined when there is none or this version cannot use it. */
  async read(volumeId: string): Promise<VolumeRecord | undefined> {
    if (!VOLUME_ID.test(volumeId)) return undefined;
    try {
      const parsed = parseRecord(await fs.readFile(this.pathOf(volumeId), 'utf8'));
      return parsed.kind === 'record' && parsed.record.volumeId === volumeId ? parsed.record : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * True when the state directory says the volume was published by this
   * driver, even if its record cannot be used: a record file of any content,
   * or the tombstone of a quarantined one.
   */
  async knows(volumeId: string): Promise<boolean> {
    if (!VOLUME_ID.test(volumeId)) return false;
    for (const file of [this.pathOf(volumeId), path.join(this.tombstonesDir, volumeId)]) {
      try {
        await fs.lstat(file);
        return true;
      } catch {
        // Not there (or unreadable): look at the next one.
      }
    }
    return false;
  }

  /** Volume ids with a tombstone. */
  async tombstones(): Promise<string[]> {
    return (await fs.readdir(this.tombstonesDir)).filter((name) => VOLUME_ID.test(name));
  }

  /**
   * Every record, in directory order. Each is read with one synchronous
   * readFileSync, as records are written: a record is a few hundred bytes on
   * the node's disk, so a read takes microseconds, where reading through
   * node:fs/promises cost four thread-pool round trips per file (open, fstat,
   * read, close), each waiting for the event loop; with 500 volumes that was
   * most of the ~140 ms between taking the lock and the first stream re-opened
   * (README "Benchmarks").
   */
  async loadAll(): Promise<LoadedRecords> {
    const loaded: LoadedRecords = { records: [], quarantined: [], unsupported: [] };
    for (const name of readdirSync(this.volumesDir)) {
      // Temp files from a crash mid-write ("<name>.json.<random>.tmp", and
      // write-file-atomic's "<name>.json.<hash>" from older versions).
      if (!name.endsWith('.json')) {
        await fs.rm(path.join(this.volumesDir, name), { force: true, recursive: true });
        continue;
      }
      const file = path.join(this.volumesDir, name);
      try {
        const parsed = parseRecord(readFileSync(file, 'utf8'));
        if (parsed.kind === 'unsupported') {
          loaded.unsupported.push(name.slice(0, -'.json'.length));
          this.logger.error(
            { file, record_version: parsed.version, supported_version: RECORD_VERSION },
            'volume metadata file was written by a newer driver version in a format this version cannot use; leaving it in place ' +
              'for that version. Its volume is not resumed (no rotation) until the newer driver runs again; NodeUnpublishVolume still removes it',
          );
          continue;
        }
        if (`${parsed.record.volumeId}.json` !== name) throw new Error(`file name does not match volumeId ${parsed.record.volumeId}`);
        loaded.records.push(parsed.record);
      } catch (err) {
        const destination = await this.quarantine(name, err);
        if (destination !== undefined) loaded.quarantined.push(destination);
      }
    }
    return loaded;
  }

  /** Moves a record that does not parse out of the way, leaving a tombstone when its name is a volume id. */
  private async quarantine(name: string, why: unknown): Promise<string | undefined> {
    const file = path.join(this.volumesDir, name);
    const destination = path.join(this.quarantineDir, `${name}.${new Date().toISOString().replace(/[:.]/g, '-')}`);
    const volumeId = name.slice(0, -'.json'.length);
    try {
      // Tombstone first: should the driver die in between, the record is still
      // in volumes/ and is quarantined again on the next start.
      if (VOLUME_ID.test(volumeId)) {
        await writeFileAtomic(path.join(this.tombstonesDir, volumeId), `${JSON.stringify({ volumeId, quarantinedTo: destination })}\n`, {
          mode: 0o600,
          fsync: true,
        });
      }
      await fs.rename(file, destination);
    } catch (err) {
      // Never fatal for the other volumes: the file stays, and is skipped again next time.
      this.logger.error({ file, err: errorMessage(err) }, 'could not move a corrupt volume metadata file to quarantine; skipping it');
      return undefined;
    }
    this.logger.error(
      { file, quarantined_to: destination, err: errorMessage(why).slice(0, 500) },
      'volume metadata file is corrupt; moved it to quarantine. That volume will not be resumed (no rotation): if its pod still runs, ' +
        'delete the pod so kubelet publishes it again. NodeUnpublishVolume still removes its mount and files',
    );
    return destination;
  }
}

function parseRecord(text: string): ParsedRecord {
  const json: unknown = JSON.parse(text);
  const version = versionOnlySchema.safeParse(json);
  if (version.success && version.data.version > RECORD_VERSION) return { kind: 'unsupported', version: version.data.version };
  return { kind: 'record', record: readableRecordSchema.parse(json) };
}

/**
 * Puts `contents` at `file` in one step: written to `temp` (a new, randomly
 * named file, mode 0600), then renamed over `file`, so a reader sees the
 * old record or the new one, never part of one. The temp file is removed when
 * a step fails.
 *
 * Synchronous, as the mount(2) call after it is (fs/libc.ts): the whole
 * write, schema check and JSON included, takes ~0.2 ms alone (p99 0.7-0.9 ms),
 * against four trips through the thread pool, each of which waited for the
 * event loop while the agent's answer was being checked (2-3 ms at the median
 * inside the driver). The driver's own publish overhead p99 went from ~6 to
 * ~4.3 ms with it (a same-hour A/B, 2 x 200 publishes each, README
 * "Benchmarks"). The price is that a stalled state-directory disk stalls the
 * driver for that long; that is usually the disk kubelet's root directory is
 * on (the chart's /var/lib/spire-csi-driver), so kubelet stalls with it.
 */
function replaceFile(file: string, temp: string, contents: string): void {
  try {
    writeFileSync(temp, contents, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    // EEXIST: the name is someone else's temp file (48 random bits make that
    // all but impossible); it is not ours to remove.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') removeQuietly(temp);
    throw err;
  }
  try {
    renameSync(temp, file);
  } catch (err) {
    removeQuietly(temp);
    throw err;
  }
}

function removeQuietly(file: string): void {
  try {
    rmSync(file, { force: true });
  } catch {
    // The write's own error is what the caller needs; loadAll removes a temp file left behind.
  }
}
