/** DER <-> PEM helpers for certificates and PKCS#8 keys. */

export function derToPem(der: Buffer, label: 'CERTIFICATE' | 'PRIVATE KEY'): string {
  const base64 = der.toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < base64.length; i += 64) lines.push(base64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

export function certificatesToPem(ders: readonly Buffer[]): string {
  return ders.map((der) => derToPem(der, 'CERTIFICATE')).join('');
}

const bundlePems = new WeakMap<readonly Buffer[], Buffer>();

/**
 * certificatesToPem's bytes for a trust bundle's certificate list, made once
 * per list: the bundle watchers parse each bundle once and every volume of
 * the trust domain gets that same list, so on a bundle change 500 volumes
 * share one encoding instead of making 500. The list must never be changed
 * after its first use here (the watchers' lists are not), and the returned
 * bytes never written to: every volume's writer writes this very buffer, it
 * does not copy it.
 */
export function bundleToPem(certificates: readonly Buffer[]): Buffer {
  let pem = bundlePems.get(certificates);
  if (pem === undefined) {
    pem = Buffer.from(certificatesToPem(certificates));
    bundlePems.set(certificates, pem);
  }
  return pem;
}

/**
 * Splits SPIRE's bundle encoding — the X.509 authorities as raw concatenated
 * ASN.1 DER certificates (marshalBundle in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/api/delegatedidentity/v1/service.go)
 * — into single
 * certificates by reading each outer SEQUENCE's length. Throws on anything that
 * is not a whole sequence of DER SEQUENCEs, so a truncated bundle is never
 * written half.
 */
export function splitConcatenatedDer(data: Buffer, what = 'bundle'): Buffer[] {
  const certificates: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    const end = derStructureEnd(data, offset, what);
    certificates.push(data.subarray(offset, end));
    offset = end;
  }
  return certificates;
}

/**
 * Where the DER SEQUENCE that starts at `offset` ends, read from its length
 * header. Throws, naming `what`, when there is no SEQUENCE there or it runs
 * past the end of `data`.
 */
export function derStructureEnd(data: Buffer, offset: number, what: string): number {
  if (data[offset] !== 0x30) {
    throw new Error(`${what} is not DER: expected a SEQUENCE tag at byte ${offset}`);
  }
  const first = data[offset + 1];
  if (first === undefined) throw new Error(`${what} is truncated at byte ${offset}`);
  let headerLength = 2;
  let contentLength: number;
  if (first < 0x80) {
    contentLength = first;
  } else {
    const lengthBytes = first & 0x7f;
    // Indefinite length (0x80) is BER, not DER; more than 4 length bytes would
    // describe a certificate larger than anything a CA issues.
    if (lengthBytes === 0 || lengthBytes > 4) {
      throw new Error(`${what} has an unsupported DER length encoding at byte ${offset}`);
    }
    if (offset + 2 + lengthBytes > data.length) throw new Error(`${what} is truncated at byte ${offset}`);
    contentLength = 0;
    for (let i = 0; i < lengthBytes; i++) contentLength = contentLength * 256 + (data[offset + 2 + i] ?? 0);
    headerLength += lengthBytes;
  }
  const end = offset + headerLength + contentLength;
  if (end > data.length) throw new Error(`${what} is truncated: the structure at byte ${offset} runs past the end`);
  return end;
}

/** The certificates in their order, each DER encoding once: a CA listed twice is written once, as readers gain nothing from the copy. */
export function withoutDuplicates(certificates: readonly Buffer[]): Buffer[] {
  const seen = new Set<string>();
  return certificates.filter((der) => {
    const key = der.toString('base64');
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
