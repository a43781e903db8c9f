/**
 * Adapts an async function to a grpc-js unary handler: a DriverError becomes
 * its own status code and message; anything else is INTERNAL and logged. The
 * request is never logged: NodePublishVolume carries secrets and may carry
 * service-account tokens (csi_secret fields, reference/csi.md §1.4, §3.3).
 */
import * as grpc from '@grpc/grpc-js';
import { DriverError, errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';

export type UnaryImplementation<Request, Response> = (request: Request, call: grpc.ServerUnaryCall<Request, Response>) => Promise<Response>;

export function unaryHandler<Request, Response>(
  method: string,
  logger: Logger,
  implementation: UnaryImplementation<Request, Response>,
  onResult?: (code: grpc.status) => void,
): grpc.handleUnaryCall<Request, Response> {
  return (call, callback) => {
    implementation(call.request, call).then(
      (response) => {
        onResult?.(grpc.status.OK);
        callback(null, response);
      },
      (err: unknown) => {
        const driverError =
          err instanceof DriverError ? err : new DriverError(grpc.status.INTERNAL, `internal error in ${method}: ${errorMessage(err)}`);
        if (!(err instanceof DriverError)) logger.error({ method, err }, 'unexpected error');
        onResult?.(driverError.code);
        callback({ code: driverError.code, details: driverError.message });
      },
    );
  };
}

/** An AbortSignal that fires when kubelet cancels the call or its deadline passes. */
export function callSignal(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, 'once'>): AbortSignal {
  const controller = new AbortController();
  call.once('cancelled', () => controller.abort());
  return controller.signal;
}
