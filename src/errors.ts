import { status } from './grpc-status.js';

/**
 * An error that knows which gRPC status code it maps to. Every failure that can
 * reach kubelet is one of these, and its message says what to fix.
 */
export class DriverError extends Error {
  readonly code: status;

  constructor(code: status, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DriverError';
    this.code = code;
  }
}

export function invalidArgument(message: string): DriverError {
  return new DriverError(status.INVALID_ARGUMENT, message);
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
