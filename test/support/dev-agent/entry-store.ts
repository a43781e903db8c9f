/**
 * The development agent's registration entries, its CA and the bundles it
 * holds, and the signing of SVIDs: the state a real agent syncs from its
 * server. It knows nothing of streams; the caller pushes what changed.
 */
import { mintCa, mintSvid, type MintedCa } from '../certs.js';
import { compareStrings, parseSelectorString, parseSpiffeId, selectorKey, trustDomainId } from './spiffe-names.js';
import type { CurrentSvid, DevEntry, DevEntrySpec, EntryRecord, IssuedSvid } from './types.js';

const CA_MIN_TTL_MS = 24 * 3600 * 1000;

export interface SigningHooks {
  /** True once the agent is closed: a signing that finishes then is dropped. */
  isClosed: () => boolean;
  /** Called as each SVID is stored, with the time its signing started. */
  onSigned: (record: EntryRecord, issuedAtMs: number) => void;
}

export class EntryStore {
  /** Oldest first; the last one signs. More than one only during a rotation (prepared + active authority). */
  private cas: MintedCa[] = [];
  private readonly federatedBundles = new Map<string, Buffer[]>();
  private readonly entries = new Map<string, EntryRecord>();
  private nextEntryNumber = 1;

  private constructor(
    readonly trustDomain: string,
    readonly svidTtlSeconds: number,
  ) {}

  /** A store with its first CA minted and no entries. */
  static async create(trustDomain: string, svidTtlSeconds: number): Promise<EntryStore> {
    const store = new EntryStore(trustDomain, svidTtlSeconds);
    store.cas = [await store.mintAgentCa()];
    return store;
  }

  // ---------------------------------------------------------------- entries

  /** Validates and registers an entry, without an SVID yet. */
  add(spec: DevEntrySpec): EntryRecord {
    const id = spec.id ?? `entry-${String(this.nextEntryNumber++).padStart(6, '0')}`;
    if (this.entries.has(id)) throw new Error(`entry ${id} already exists`);
    const spiffe = parseSpiffeId(spec.spiffeId);
    if (spiffe.trustDomain !== this.trustDomain) {
      throw new Error(`entry SPIFFE ID ${spec.spiffeId} is not in the agent's trust domain ${this.trustDomain}`);
    }
    if (spec.selectors.length === 0) throw new Error('an entry needs at least one selector');
    const selectors = spec.selectors.map(parseSelectorString);
    const entry: DevEntry = {
      id,
      spiffeId: spec.spiffeId,
      selectors,
      hint: spec.hint ?? '',
      ttlSeconds: spec.ttlSeconds ?? this.svidTtlSeconds,
      admin: spec.admin ?? false,
      federatesWith: [...new Set((spec.federatesWith ?? []).map(trustDomainId))].sort(compareStrings),
    };
    const record: EntryRecord = { entry, selectorKeys: selectors.map(selectorKey), svid: undefined, generation: 0 };
    this.entries.set(id, record);
    return record;
  }

  /** Unregisters an entry; a signing of it still under way is dropped. */
  remove(id: string): EntryRecord | undefined {
    const record = this.entries.get(id);
    if (!record) return undefined;
    this.entries.delete(id);
    record.generation++;
    return record;
  }

  /** The entry's record; throws if there is none. */
  get(id: string): EntryRecord {
    const record = this.entries.get(id);
    if (!record) throw new Error(`no entry ${id}`);
    return record;
  }

  /** Whether `record` is still the registered entry of its ID. */
  isLive(record: EntryRecord): boolean {
    return this.entries.get(record.entry.id) === record;
  }

  records(): EntryRecord[] {
    return [...this.entries.values()];
  }

  list(): DevEntry[] {
    return this.records()
      .map((r) => structuredClone(r.entry))
      .sort((a, b) => compareStrings(a.id, b.id));
  }

  /** F4: entries all of whose selectors are in the set, sorted by entry ID. */
  matching(selectorKeys: Set<string>): EntryRecord[] {
    return this.records()
      .filter((r) => r.selectorKeys.every((key) => selectorKeys.has(key)))
      .sort((a, b) => compareStrings(a.entry.id, b.entry.id));
  }

  currentSvid(entryId: string): CurrentSvid {
    const record = this.get(entryId);
    const svid = record.svid;
    const leaf = svid?.certChain[0];
    if (!svid || !leaf) throw new Error(`entry ${entryId} has no SVID yet; await addEntry() first`);
    return {
      certDer: leaf,
      certChain: [...svid.certChain],
      keyPkcs8Der: svid.keyPkcs8Der,
      serialHex: svid.serialHex,
      spiffeId: record.entry.spiffeId,
      notAfter: svid.notAfter,
    };
  }

  // ---------------------------------------------------------------- signing

  /**
   * Signs fresh SVIDs (new key, new serial) with the active CA and returns the
   * records whose SVID was stored: not those removed, closed or re-issued
   * meanwhile.
   */
  async sign(records: EntryRecord[], hooks: SigningHooks): Promise<EntryRecord[]> {
    const ca = this.activeCa();
    const issued: EntryRecord[] = [];
    await Promise.all(
      records.map(async (record) => {
        const generation = ++record.generation;
        const now = Date.now();
        // SPIRE never signs past its CA's NotAfter.
        const notAfter = new Date(Math.min(now + record.entry.ttlSeconds * 1000, ca.notAfter.getTime()));
        const minted = await mintSvid({ ca, spiffeId: record.entry.spiffeId, notAfter });
        if (hooks.isClosed() || record.generation !== generation || !this.isLive(record)) return;
        record.svid = {
          certChain: minted.certChain,
          keyPkcs8Der: minted.keyPkcs8Der,
          serialHex: minted.serialHex,
          notAfter: minted.notAfter,
          expiresAt: Math.floor(minted.notAfter.getTime() / 1000),
        };
        hooks.onSigned(record, now);
        issued.push(record);
      }),
    );
    return issued;
  }

  /** Stores `svid` as the entry's SVID, unchecked; a signing still under way is dropped. */
  replaceSvid(record: EntryRecord, svid: IssuedSvid): void {
    record.generation++;
    record.svid = svid;
  }

  // ------------------------------------------------------------ CA, bundles

  /** The own trust domain's CA certificates, oldest first. */
  bundleDers(): Buffer[] {
    return this.cas.map((ca) => ca.certDer);
  }

  activeCa(): MintedCa {
    const ca = this.cas[this.cas.length - 1];
    if (!ca) throw new Error('DevAgent has no CA yet');
    return ca;
  }

  /** Publishes a new authority next to the old ones; it signs from now on. */
  async addCa(): Promise<void> {
    this.cas.push(await this.mintAgentCa());
  }

  /** Keeps only the newest CA; false when there was nothing to drop. */
  dropOldCas(): boolean {
    if (this.cas.length <= 1) return false;
    this.cas = this.cas.slice(-1);
    return true;
  }

  /** Sets (or with no certificates removes) the bundle of `td` (`spiffe://td`); false when nothing changed. */
  setFederatedBundle(td: string, certDers: Buffer[]): boolean {
    if (td === `spiffe://${this.trustDomain}`) throw new Error('use rotateCa()/dropOldCa() for the own trust domain');
    const previous = this.federatedBundles.get(td);
    if (previous && Buffer.concat(previous).equals(Buffer.concat(certDers))) return false;
    if (certDers.length === 0) this.federatedBundles.delete(td);
    else
      this.federatedBundles.set(
        td,
        certDers.map((der) => Buffer.from(der)),
      );
    return true;
  }

  hasFederatedBundle(td: string): boolean {
    return this.federatedBundles.has(td);
  }

  /** Own trust domain plus the federated bundles some entry federates with (F9), as concatenated DER (F8). */
  heldBundles(): Map<string, Buffer> {
    const held = new Map<string, Buffer>([[`spiffe://${this.trustDomain}`, Buffer.concat(this.bundleDers())]]);
    const referenced = new Set<string>();
    for (const record of this.entries.values()) for (const td of record.entry.federatesWith) referenced.add(td);
    for (const td of [...referenced].sort(compareStrings)) {
      const certs = this.federatedBundles.get(td);
      if (certs) held.set(td, Buffer.concat(certs));
    }
    return held;
  }

  /** Changes exactly when {@link heldBundles} does. */
  bundleSignature(): string {
    return [...this.heldBundles()].map(([td, der]) => `${td}=${der.toString('base64')}`).join(';');
  }

  private async mintAgentCa(): Promise<MintedCa> {
    const lifetimeMs = Math.max(CA_MIN_TTL_MS, 4 * this.svidTtlSeconds * 1000);
    return mintCa({ trustDomain: this.trustDomain, notAfter: new Date(Date.now() + lifetimeMs) });
  }
}
