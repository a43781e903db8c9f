/** The Envoy-style cert/key pair reader shared by the integration and end-to-end tests. */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * A reader that loads cert and key through the visible names in a tight loop
 * the way Envoy's file SDS does (read both, re-read, accept only when two
 * consecutive reads agree), and counts accepted loads whose certificate and key
 * do not match. A driver that swapped the files one by one would be caught.
 */
export class PairReader {
  accepted = 0;
  mismatched = 0;
  unstable = 0;
  /** Attempts that failed to read a file (a name missing, however briefly): a file lost. */
  errors = 0;
  /** The first few read errors, for a failure message. */
  readonly errorSamples: string[] = [];
  private running = true;
  private readonly done: Promise<void>;

  constructor(targetPath: string, names = { cert: 'svid.pem', key: 'svid_key.pem' }) {
    const readPair = async (): Promise<string> => {
      const cert = await fs.readFile(path.join(targetPath, names.cert), 'utf8');
      const key = await fs.readFile(path.join(targetPath, names.key), 'utf8');
      return `${cert}\0${key}`;
    };
    this.done = (async () => {
      while (this.running) {
        try {
          const first = await readPair();
          const second = await readPair();
          if (first !== second) {
            this.unstable += 1;
          } else {
            this.accepted += 1;
            const [cert, key] = first.split('\0') as [string, string];
            if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) this.mismatched += 1;
          }
        } catch (err) {
          // A name briefly missing fails the attempt; Envoy would retry.
          this.errors += 1;
          if (this.errorSamples.length < 5) this.errorSamples.push(`${targetPath}: ${err instanceof Error ? err.message : String(err)}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
  }
}
