/** Waiting in the end-to-end tests: sleeps, polling until a condition holds, and a free port to listen on. */
import net from 'node:net';
import { inspect } from 'node:util';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` every `intervalMs` until it holds; fails with `what` (and `diagnostics()`) after the timeout. */
export async function waitFor<T>(
  what: string,
  condition: () => Promise<T | undefined | false> | T | undefined | false,
  options: { timeoutMs: number; intervalMs?: number; diagnostics?: () => string | Promise<string> },
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const detail = lastError === undefined ? '' : ` (last error: ${lastError instanceof Error ? lastError.message : inspect(lastError)})`;
      const diagnostics = options.diagnostics ? `\n${await Promise.resolve(options.diagnostics()).catch((e: unknown) => String(e))}` : '';
      throw new Error(`timed out after ${options.timeoutMs} ms waiting for ${what}${detail}${diagnostics}`);
    }
    await sleep(options.intervalMs ?? 100);
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}
