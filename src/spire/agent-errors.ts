/**
 * Turns a failed agent stream into a sentence that tells the operator what to
 * fix (isCallerAuthorized and constructValidSelectorsFromReq in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/api/delegatedidentity/v1/service.go
 * show what the agent answers; docs/design.md facts F2, F3).
 */
import { status, statusName } from '../grpc-status.js';

export interface StreamFailure {
  code: status;
  details: string;
  /** The admin socket file was absent when the failure happened. */
  socketMissing: boolean;
}

export function describeStreamFailure(failure: StreamFailure, socketPath: string): string {
  const codeName = statusName(failure.code);
  if (failure.code === status.PERMISSION_DENIED) {
    if (/no identity issued/i.test(failure.details)) {
      return (
        `the SPIRE agent answered PERMISSION_DENIED ("${failure.details}"): the driver itself has no registration entry on this node. ` +
        "Register it (e.g. a ClusterSPIFFEID selecting the spire-csi-driver pods) and list its SPIFFE ID in the agent's authorized_delegates"
      );
    }
    return (
      `the SPIRE agent answered PERMISSION_DENIED ("${failure.details}"): the driver is not an authorized delegate. ` +
      "Add the driver's SPIFFE ID to the agent's authorized_delegates (SPIRE Helm chart: spire-agent.authorizedDelegates)"
    );
  }
  if (failure.socketMissing || (failure.code === status.UNAVAILABLE && /ENOENT|ECONNREFUSED|No connection established/i.test(failure.details))) {
    return (
      `the SPIRE agent admin socket is unreachable at ${socketPath} (${codeName}: ${failure.details}). ` +
      'Check that the agent runs on this node with admin_socket_path set (SPIRE Helm chart: sockets.admin.enabled and sockets.admin.mountOnHost) and that its directory is mounted into the driver'
    );
  }
  return `the SPIRE agent stream failed with ${codeName}: ${failure.details}`;
}

/** Errors that retrying within one publish call will not fix. */
export function isConfigurationFailure(failure: StreamFailure): boolean {
  return failure.code === status.PERMISSION_DENIED || failure.code === status.INVALID_ARGUMENT || failure.code === status.UNIMPLEMENTED;
}
