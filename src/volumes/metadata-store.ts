/**
 * One JSON file per volume in the state directory, so a restarted driver takes
 * every volume back without asking the Kubernetes API (DESIGN.md invariant 6).
 * Each file is written atomically (write-file-atomic: temp file + fsync +
 * rename), and a file that fails to parse is moved into quarantine/ with an
 * error log instead of stopping the driver — cert-manager/csi-lib fails the
 * whole node on one bad file (reference/anchors.md §1.1). No secret is ever
 * stored here: not the key, not the service-account tokens.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';
import { z } from 'zod';
import { errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';

/** kubelet's inline volume ids; anything else never names a file of ours. */
const VOLUME_ID = /^csi-[0-9a-f]{64}$/;

const volumeRecordSchema = z
  .object({
    version: z.literal(1),
    volumeId: z.string().regex(VOLUME_ID),
    targetPath: z.string().startsWith('/'),
    volumeName: z.string().min(1),
    pod: z.object({
      uid: z.string().min(1),
      name: z.string().min(1),
      namespace: z.string().min(1),
      serviceAccount: z.string().min(1),
    }),
    files: z.object({ cert: z.string().min(1), key: z.string().min(1), bundle: z.string().min(1) }),
    fsGroup: z.number().int().nonnegative().nullable(),
    spiffeId: z.string().nullable(),
    hint: z.string().nullable(),
    tmpfs: z.boolean(),
    createdAt: z.string(),
  })
  .strict();

export type VolumeRecord = z.infer<typeof volumeRecordSchema>;

export interface LoadedRecords {
  records: VolumeRecord[];
  quarantined: string[];
}

export class MetadataStore {
  readonly volumesDir: string;
  readonly quarantineDir: string;

  constructor(
    stateDir: string,
    private readonly logger: Logger,
  ) {
    this.volumesDir = path.join(stateDir, 'volumes');
    this.quarantineDir = path.join(stateDir, 'quarantine');
  }

  async init(): Promise<void> {
    await fs.mkdir(this.volumesDir, { recursive: true, mode: 0o700 });
    await fs.mkdir(this.quarantineDir, { recursive: true, mode: 0o700 });
  }

  /** Refuses ids that are not kubelet's, so a crafted volume_id can never name a path outside volumes/. */
  pathOf(volumeId: string): string {
    if (!VOLUME_ID.test(volumeId)) throw new Error(`not a volume id: ${JSON.stringify(volumeId.slice(0, 80))}`);
    return path.join(this.volumesDir, `${volumeId}.json`);
  }

  async write(record: VolumeRecord): Promise<void> {
    await writeFileAtomic(this.pathOf(record.volumeId), `${JSON.stringify(volumeRecordSchema.parse(record), null, 2)}\n`, {
      mode: 0o600,
      fsync: true,
    });
  }

  async remove(volumeId: string): Promise<void> {
    if (!VOLUME_ID.test(volumeId)) return;
    await fs.rm(this.pathOf(volumeId), { force: true });
  }

  /** The record of one volume, or undefined when there is none or it does not parse. */
  async read(volumeId: string): Promise<VolumeRecord | undefined> {
    if (!VOLUME_ID.test(volumeId)) return undefined;
    try {
      const record = volumeRecordSchema.parse(JSON.parse(await fs.readFile(this.pathOf(volumeId), 'utf8')));
      return record.volumeId === volumeId ? record : undefined;
    } catch {
      return undefined;
    }
  }

  async loadAll(): Promise<LoadedRecords> {
    const records: VolumeRecord[] = [];
    const quarantined: string[] = [];
    for (const name of await fs.readdir(this.volumesDir)) {
      // write-file-atomic's temp files ("<name>.json.<hash>") from a crash mid-write.
      if (!name.endsWith('.json')) {
        await fs.rm(path.join(this.volumesDir, name), { force: true, recursive: true });
        continue;
      }
      const file = path.join(this.volumesDir, name);
      try {
        const record = volumeRecordSchema.parse(JSON.parse(await fs.readFile(file, 'utf8')));
        if (`${record.volumeId}.json` !== name) throw new Error(`file name does not match volumeId ${record.volumeId}`);
        records.push(record);
      } catch (err) {
        const destination = path.join(this.quarantineDir, `${name}.${new Date().toISOString().replace(/[:.]/g, '-')}`);
        try {
          await fs.rename(file, destination);
        } catch (renameError) {
          // Never fatal for the other volumes: the file stays, and is skipped again next time.
          this.logger.error({ file, err: errorMessage(renameError) }, 'could not move a corrupt volume metadata file to quarantine; skipping it');
          continue;
        }
        quarantined.push(destination);
        this.logger.error(
          { file, quarantined_to: destination, err: errorMessage(err).slice(0, 500) },
          'volume metadata file is corrupt; moved it to quarantine. That volume will not be resumed: if its pod still runs, delete the pod so kubelet publishes it again',
        );
      }
    }
    return { records, quarantined };
  }
}
