/**
 * SHA-256 of a list of byte strings, each prefixed with its length, in hex:
 * what the volumes, the AtomicWriter and the SVID checks remember of what
 * they last saw instead of keeping it. The length prefix keeps two different
 * lists from hashing alike by moving bytes from one part to the next.
 */
import { createHash } from 'node:crypto';

export function digestOfParts(parts: Iterable<Buffer>): string {
  const hash = createHash('sha256');
  const length = Buffer.alloc(4);
  for (const part of parts) {
    length.writeUInt32BE(part.length);
    hash.update(length).update(part);
  }
  return hash.digest('hex');
}
