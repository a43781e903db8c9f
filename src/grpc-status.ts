/**
 * gRPC status codes
 * (https://github.com/grpc/grpc/blob/master/doc/statuscodes.md). The driver's
 * own table: grpc-js is not a runtime dependency (src/csi/h2-grpc-server.ts,
 * src/spire/h2-grpc-client.ts). A plain object of numbers rather than an enum,
 * so that the tests' grpc-js codes and these compare and assign both ways.
 */
export const status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export type status = (typeof status)[keyof typeof status];

const NAMES: ReadonlyMap<number, string> = new Map(Object.entries(status).map(([name, code]) => [code, name]));

/** The code's name ("NOT_FOUND"), or its number for a code outside the table. */
export function statusName(code: number): string {
  return NAMES.get(code) ?? String(code);
}
