/** A pino destination that keeps the lines, for assertions on what was logged (and nothing printed). */
import { createLogger, type Logger } from '../../../src/observability/logger.js';

export class MemoryLog {
  readonly lines: string[] = [];

  write(chunk: string): void {
    this.lines.push(...chunk.split('\n').filter((line) => line.length > 0));
  }

  entries(): Record<string, unknown>[] {
    return this.lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  /** The entries whose message is `msg`. */
  withMessage(msg: string): Record<string, unknown>[] {
    return this.entries().filter((entry) => entry['msg'] === msg);
  }

  logger(level = 'debug'): Logger {
    return createLogger({ level, destination: this });
  }
}
