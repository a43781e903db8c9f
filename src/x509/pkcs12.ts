/**
 * A PKCS#12 keystore (RFC 7292) holding the SVID's key and chain, for Java
 * and other applications that only read keystores.
 *
 * Who does what: asn1js (PeculiarVentures, the ASN.1 layer of pkijs and
 * @peculiar/x509) encodes the structures; every cryptographic step is
 * node:crypto, i.e. OpenSSL (PBKDF2, AES-256-CBC, SHA-256, HMAC). pkijs itself
 * can build PFX files, but only with random salts and IVs.
 *
 * The choices, and who reads them:
 * - The key is a pkcs8ShroudedKeyBag encrypted with PBES2: PBKDF2 with
 *   hmacWithSHA256 and AES-256-CBC (RFC 8018), as OpenSSL 3 writes by default
 *   and Java reads since 8u301/11.0.12 (JDK-8153005). Not the legacy
 *   pbeWithSHAAnd3-KeyTripleDES-CBC / RC2-40, which OpenSSL 3 only reads with
 *   its legacy provider.
 * - The integrity MAC is HMAC-SHA256 with the RFC 7292 Appendix B key
 *   derivation (what `openssl pkcs12 -export` does since 3.0, and Java since
 *   the same releases). Not PBMAC1 (RFC 9579): OpenSSL 3.0 and Java do not read it.
 * - The certificates (leaf first, then the intermediates) are in a plain
 *   `data` ContentInfo: they are public, and both OpenSSL and Java read them
 *   unencrypted (`openssl pkcs12 -certpbe NONE`). The leaf and the key share a
 *   localKeyId and the friendlyName (Java's alias) `svid`. The trust bundle is
 *   not in it: Java only takes a trusted certificate from a PKCS#12 file with
 *   an Oracle-specific attribute, and trust belongs in its own file.
 * - Salts and the IV are derived from the password and the content (HMAC-SHA256)
 *   instead of drawn at random, so the same key and chain give the same bytes:
 *   the AtomicWriter then writes nothing for an unchanged update (docs/design.md
 *   invariant 4), where random salts would swap ..data at every bundle re-send.
 *   This costs nothing here: the password is in the pod spec, not a secret
 *   from anyone who can read the file, so the file's mode (the key file's)
 *   protects the key, not the encryption. For the same reason the iteration
 *   count is OpenSSL's default, 2048, not a large one.
 */
import { createCipheriv, createHash, createHmac, pbkdf2Sync } from 'node:crypto';
import * as asn1js from 'asn1js';

const OID = {
  data: '1.2.840.113549.1.7.1',
  pkcs8ShroudedKeyBag: '1.2.840.113549.1.12.10.1.2',
  certBag: '1.2.840.113549.1.12.10.1.3',
  x509Certificate: '1.2.840.113549.1.9.22.1',
  friendlyName: '1.2.840.113549.1.9.20',
  localKeyId: '1.2.840.113549.1.9.21',
  pbes2: '1.2.840.113549.1.5.13',
  pbkdf2: '1.2.840.113549.1.5.12',
  hmacWithSha256: '1.2.840.113549.2.9',
  aes256Cbc: '2.16.840.1.101.3.4.1.42',
  sha256: '2.16.840.1.101.3.4.2.1',
} as const;

/** OpenSSL's PKCS12_DEFAULT_ITER; see the note on the password above. */
export const PKCS12_ITERATIONS = 2048;
/** The alias Java's KeyStore shows for the key entry. */
export const PKCS12_ALIAS = 'svid';

export interface Pkcs12Input {
  /** PKCS#8 DER. */
  keyDer: Buffer;
  /** DER, leaf first. */
  certChain: readonly Buffer[];
  /** Printable ASCII (checked by the attribute parser), so every reader encodes it alike. */
  password: string;
}

export function buildPkcs12({ keyDer, certChain, password }: Pkcs12Input): Buffer {
  const leaf = certChain[0];
  if (leaf === undefined) throw new Error('a PKCS#12 keystore needs at least the leaf certificate');
  // Everything random-looking is derived from this, so equal input gives equal bytes.
  const seed = createHmac('sha256', password).update('spire-csi-driver pkcs12 v1');
  for (const part of [keyDer, ...certChain]) seed.update(part);
  const seedBytes = seed.digest();
  const derive = (label: string, length: number): Buffer => createHmac('sha256', seedBytes).update(label).digest().subarray(0, length);
  const localKeyId = createHash('sha1').update(leaf).digest();
  const attributes = bagAttributes(localKeyId);

  const keyBag = safeBag(
    OID.pkcs8ShroudedKeyBag,
    encryptedPrivateKeyInfo(keyDer, password, derive('key salt', 16), derive('key iv', 16)),
    attributes,
  );
  const certBags = certChain.map((cert, i) =>
    safeBag(
      OID.certBag,
      new asn1js.Sequence({
        value: [new asn1js.ObjectIdentifier({ value: OID.x509Certificate }), explicit0(new asn1js.OctetString({ valueHex: toArrayBuffer(cert) }))],
      }),
      i === 0 ? attributes : undefined,
    ),
  );
  const authenticatedSafe = der(
    new asn1js.Sequence({
      value: [dataContentInfo(der(new asn1js.Sequence({ value: certBags }))), dataContentInfo(der(new asn1js.Sequence({ value: [keyBag] })))],
    }),
  );

  const macSalt = derive('mac salt', 16);
  const macKey = pkcs12Kdf(password, macSalt, 3, PKCS12_ITERATIONS, 32);
  const mac = createHmac('sha256', macKey).update(authenticatedSafe).digest();
  const pfx = new asn1js.Sequence({
    value: [
      new asn1js.Integer({ value: 3 }),
      dataContentInfo(authenticatedSafe),
      new asn1js.Sequence({
        value: [
          new asn1js.Sequence({
            value: [algorithm(OID.sha256, new asn1js.Null()), new asn1js.OctetString({ valueHex: toArrayBuffer(mac) })],
          }),
          new asn1js.OctetString({ valueHex: toArrayBuffer(macSalt) }),
          new asn1js.Integer({ value: PKCS12_ITERATIONS }),
        ],
      }),
    ],
  });
  return der(pfx);
}

/** EncryptedPrivateKeyInfo with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), RFC 8018 §6.2 and appendix A.2, A.4. */
function encryptedPrivateKeyInfo(keyDer: Buffer, password: string, salt: Buffer, iv: Buffer): asn1js.Sequence {
  // PBES2 takes the password as its bytes; ASCII only, so UTF-8 is what OpenSSL and Java use too.
  const key = pbkdf2Sync(Buffer.from(password, 'utf8'), salt, PKCS12_ITERATIONS, 32, 'sha256');
  const cipher = createCipheriv('aes-256-cbc', key, iv);
  const encrypted = Buffer.concat([cipher.update(keyDer), cipher.final()]);
  const pbes2Params = new asn1js.Sequence({
    value: [
      algorithm(
        OID.pbkdf2,
        new asn1js.Sequence({
          value: [
            new asn1js.OctetString({ valueHex: toArrayBuffer(salt) }),
            new asn1js.Integer({ value: PKCS12_ITERATIONS }),
            algorithm(OID.hmacWithSha256, new asn1js.Null()),
          ],
        }),
      ),
      algorithm(OID.aes256Cbc, new asn1js.OctetString({ valueHex: toArrayBuffer(iv) })),
    ],
  });
  return new asn1js.Sequence({
    value: [algorithm(OID.pbes2, pbes2Params), new asn1js.OctetString({ valueHex: toArrayBuffer(encrypted) })],
  });
}

function bagAttributes(localKeyId: Buffer): asn1js.Set {
  return new asn1js.Set({
    value: [
      new asn1js.Sequence({
        value: [new asn1js.ObjectIdentifier({ value: OID.friendlyName }), new asn1js.Set({ value: [new asn1js.BmpString({ value: PKCS12_ALIAS })] })],
      }),
      new asn1js.Sequence({
        value: [
          new asn1js.ObjectIdentifier({ value: OID.localKeyId }),
          new asn1js.Set({ value: [new asn1js.OctetString({ valueHex: toArrayBuffer(localKeyId) })] }),
        ],
      }),
    ],
  });
}

function safeBag(bagId: string, value: asn1js.AsnType, attributes: asn1js.Set | undefined): asn1js.Sequence {
  return new asn1js.Sequence({
    value: [new asn1js.ObjectIdentifier({ value: bagId }), explicit0(value), ...(attributes === undefined ? [] : [attributes])],
  });
}

/** ContentInfo of type data: [0] EXPLICIT OCTET STRING holding `content`. */
function dataContentInfo(content: Buffer): asn1js.Sequence {
  return new asn1js.Sequence({
    value: [new asn1js.ObjectIdentifier({ value: OID.data }), explicit0(new asn1js.OctetString({ valueHex: toArrayBuffer(content) }))],
  });
}

function algorithm(oid: string, parameters: asn1js.AsnType): asn1js.Sequence {
  return new asn1js.Sequence({ value: [new asn1js.ObjectIdentifier({ value: oid }), parameters] });
}

function explicit0(value: asn1js.AsnType): asn1js.Constructed {
  return new asn1js.Constructed({ idBlock: { tagClass: 3, tagNumber: 0 }, value: [value] });
}

function der(value: asn1js.AsnType): Buffer {
  return Buffer.from(value.toBER(false));
}

function toArrayBuffer(bytes: Buffer): ArrayBuffer {
  return new Uint8Array(bytes).buffer;
}

/**
 * The PKCS#12 key derivation of RFC 7292 appendix B.2 with SHA-256 (u = 32,
 * v = 64 bytes), which the classic MacData needs and node:crypto does not offer.
 * `id` 3 derives a MAC key. The password is a BMPString with its two-byte NUL
 * terminator (appendix B.1).
 */
export function pkcs12Kdf(password: string, salt: Buffer, id: number, iterations: number, length: number): Buffer {
  const u = 32;
  const v = 64;
  const passwordBytes = password.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from(password, 'utf16le').swap16(), Buffer.alloc(2)]);
  const fill = (bytes: Buffer): Buffer => {
    const size = v * Math.ceil(bytes.length / v);
    const out = Buffer.alloc(size);
    for (let i = 0; i < size; i++) out[i] = bytes[i % bytes.length] as number;
    return out;
  };
  const diversifier = Buffer.alloc(v, id);
  const input = Buffer.concat([fill(salt), fill(passwordBytes)]);
  const blocks: Buffer[] = [];
  for (let produced = 0; produced < length; produced += u) {
    let a = createHash('sha256').update(diversifier).update(input).digest();
    for (let r = 1; r < iterations; r++) a = createHash('sha256').update(a).digest();
    blocks.push(a);
    // I_j = (I_j + B + 1) mod 2^(v*8) for every v-byte block of I, B = A repeated to v bytes.
    const b = fill(a);
    for (let j = 0; j < input.length; j += v) {
      let carry = 1;
      for (let k = v - 1; k >= 0; k--) {
        const sum = (input[j + k] as number) + (b[k] as number) + carry;
        input[j + k] = sum & 0xff;
        carry = sum >> 8;
      }
    }
  }
  return Buffer.concat(blocks).subarray(0, length);
}
