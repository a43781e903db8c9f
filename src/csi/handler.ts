/**
 * Adapts an async function to a unary method of the CSI server (h2-grpc-server.ts): a DriverError becomes
 * its own status code and message; anything else is INTERNAL. Every failed
 * call is logged here, once, with method, code, volume, pod and duration. The
 * request is never logged: NodePublishVolume carries secrets and may carry
 * service-account tokens (csi_secret fields of
 * https://github.com/container-storage-interface/spec/blob/v1.12.0/csi.proto, and kubelet's
 * csi.storage.k8s.io/serviceAccount.tokens key, docs/design.md fact F10).
 */
import { DriverError, errorMessage } from '../errors.js';
import { status, statusName } from '../grpc-status.js';
import type { LogFields, Logger } from '../observability/logger.js';
import { POD_INFO_KEYS } from '../volumes/pod-binding.js';
import type { UnaryMethodHandler } from './h2-grpc-server.js';

/** `signal` aborts when kubelet cancels the call or its deadline passes. */
export type UnaryImplementation<Request, Response> = (request: Request, signal: AbortSignal) => Promise<Response>;

export function unaryHandler<Request, Response>(
  method: string,
  logger: Logger,
  implementation: UnaryImplementation<Request, Response>,
  onResult?: (code: status) => void,
): UnaryMethodHandler {
  return async (request, signal) => {
    const startedAt = performance.now();
    try {
      // The server decoded it with this method's own codec.
      const response = await implementation(request as Request, signal);
      onResult?.(status.OK);
      return response;
    } catch (err) {
      const driverError = err instanceof DriverError ? err : new DriverError(status.INTERNAL, `internal error in ${method}: ${errorMessage(err)}`);
      // The one log line of a failed call, for every method: kubelet shows
      // the message in a pod event, but the node's logs must say it too.
      // INTERNAL is a fault of ours or of the node; every other code names
      // something the caller or the cluster must change, or is transient.
      const fields: LogFields = {
        method,
        code: statusName(driverError.code),
        ...describeRequest(request),
        duration_ms: Math.round(performance.now() - startedAt),
        err: driverError.message,
      };
      if (driverError.code === status.INTERNAL) logger.error(fields, `${method} failed`);
      else logger.warn(fields, `${method} failed`);
      onResult?.(driverError.code);
      throw driverError;
    }
  };
}

/**
 * The identifying fields of a request, and only those: volume_id, target_path
 * and the pod kubelet names in volume_context. Nothing else is read from it,
 * so secrets and service-account tokens can never reach the log line.
 */
function describeRequest(request: unknown): Pick<LogFields, 'volume_id' | 'target_path' | 'pod'> {
  if (typeof request !== 'object' || request === null) return {};
  const fields: Pick<LogFields, 'volume_id' | 'target_path' | 'pod'> = {};
  const { volume_id: volumeId, target_path: targetPath, volume_context: context } = request as Record<string, unknown>;
  if (typeof volumeId === 'string' && volumeId !== '') fields.volume_id = volumeId.slice(0, 200);
  if (typeof targetPath === 'string' && targetPath !== '') fields.target_path = targetPath.slice(0, 500);
  if (typeof context === 'object' && context !== null) {
    const namespace = (context as Record<string, unknown>)[POD_INFO_KEYS.namespace];
    const name = (context as Record<string, unknown>)[POD_INFO_KEYS.name];
    if (typeof namespace === 'string' && typeof name === 'string') fields.pod = `${namespace}/${name}`.slice(0, 400);
  }
  return fields;
}
