/**
 * The state directory's records in memory, like cert-manager csi-lib's
 * storage/memory.go: what MetadataStore keeps on disk, with the same answers
 * (a record in a newer format is known but never returned; a corrupt one is
 * quarantined on loadAll and leaves a tombstone), and writes that fail on demand.
 */
import type { LoadedRecords, VolumeRecord, VolumeRecordStore } from '../../../src/volumes/metadata-store.js';

/** kubelet's inline volume ids, as MetadataStore accepts them. */
const VOLUME_ID = /^csi-[0-9a-f]{64}$/;

export class MemoryRecordStore implements VolumeRecordStore {
  readonly volumesDir = '/memory/state/volumes';
  private readonly records = new Map<string, VolumeRecord>();
  /** Ids whose record is in a newer, incompatible format: left in place, never returned. */
  private readonly newerFormat = new Set<string>();
  /** Ids whose record does not parse: quarantined by the next loadAll. */
  private readonly corrupt = new Set<string>();
  private readonly tombstoneIds = new Set<string>();
  /** Every record written, in order. */
  readonly written: VolumeRecord[] = [];
  /** When set, write() rejects with it. */
  failWrites: Error | undefined;

  /** Puts a record in place as a previous run of the driver would have left it. */
  seed(record: VolumeRecord): void {
    this.records.set(record.volumeId, structuredClone(record));
  }

  seedNewerFormat(volumeId: string): void {
    this.newerFormat.add(volumeId);
  }

  seedCorrupt(volumeId: string): void {
    this.corrupt.add(volumeId);
  }

  seedTombstone(volumeId: string): void {
    this.tombstoneIds.add(volumeId);
  }

  /** Ids of the usable records. */
  recordIds(): string[] {
    return [...this.records.keys()];
  }

  /** Ids with a tombstone, synchronously. */
  tombstoneIdsNow(): string[] {
    return [...this.tombstoneIds];
  }

  newerFormatIds(): string[] {
    return [...this.newerFormat];
  }

  /** True when nothing at all is stored: no record of any kind, no tombstone. */
  isEmpty(): boolean {
    return this.records.size + this.newerFormat.size + this.corrupt.size + this.tombstoneIds.size === 0;
  }

  async write(record: VolumeRecord): Promise<void> {
    if (this.failWrites) throw this.failWrites;
    if (!VOLUME_ID.test(record.volumeId)) throw new Error(`not a volume id: ${JSON.stringify(record.volumeId.slice(0, 80))}`);
    this.records.set(record.volumeId, structuredClone(record));
    this.written.push(structuredClone(record));
  }

  async read(volumeId: string): Promise<VolumeRecord | undefined> {
    const record = this.records.get(volumeId);
    return record === undefined ? undefined : structuredClone(record);
  }

  async remove(volumeId: string): Promise<void> {
    this.records.delete(volumeId);
    this.newerFormat.delete(volumeId);
    this.corrupt.delete(volumeId);
    this.tombstoneIds.delete(volumeId);
  }

  async knows(volumeId: string): Promise<boolean> {
    return this.records.has(volumeId) || this.newerFormat.has(volumeId) || this.corrupt.has(volumeId) || this.tombstoneIds.has(volumeId);
  }

  async tombstones(): Promise<string[]> {
    return [...this.tombstoneIds];
  }

  async loadAll(): Promise<LoadedRecords> {
    const quarantined: string[] = [];
    for (const volumeId of this.corrupt) {
      this.tombstoneIds.add(volumeId);
      quarantined.push(`/memory/state/quarantine/${volumeId}.json`);
    }
    this.corrupt.clear();
    return {
      records: [...this.records.values()].map((record) => structuredClone(record)),
      quarantined,
      unsupported: [...this.newerFormat],
    };
  }
}
