/**
 * The tests' side of raw HTTP/2: what a scripted peer receives, split into
 * frames (test/unit/http2-client-connection.test.ts and
 * http2-server-connection.test.ts script the other side of the driver's
 * connection with it).
 */

export interface ReceivedFrame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

export class FrameReader {
  readonly frames: ReceivedFrame[] = [];
  private buffered = Buffer.alloc(0);

  /** Adds received bytes; each whole frame among them joins `frames`. */
  push(chunk: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    while (this.buffered.length >= 9) {
      const length = this.buffered.readUIntBE(0, 3);
      if (this.buffered.length < 9 + length) break;
      this.frames.push({
        type: this.buffered[3] as number,
        flags: this.buffered[4] as number,
        streamId: this.buffered.readUInt32BE(5),
        payload: Buffer.from(this.buffered.subarray(9, 9 + length)),
      });
      this.buffered = this.buffered.subarray(9 + length);
    }
  }

  /** The first frame `match` accepts, received already or within `timeoutMs`. */
  async frame(match: (f: ReceivedFrame) => boolean, timeoutMs = 2000): Promise<ReceivedFrame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no such frame; got ${JSON.stringify(this.frames.map((f) => [f.type, f.flags, f.streamId]))}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}
