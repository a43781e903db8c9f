/**
 * The health of a live volume, for NodeGetVolumeStats' volume_condition
 * (VOLUME_CONDITION capability). kubelet only reports it (in its volume stats,
 * with the CSIVolumeHealth feature gate) and never acts on it, so it is for
 * people and monitoring (spire_csi_volumes_abnormal): an abnormal condition
 * says what is wrong and what to check. Pure: the caller passes the time, so
 * the unit tests decide it without waiting for certificates to age.
 */
import { describeStreamFailure, type StreamFailure } from '../spire/agent-errors.js';

/**
 * How long after the renewal point a volume may still hold the same SVID, as
 * a fraction of the SVID's lifetime. The SPIRE agent renews an X.509-SVID once
 * half its lifetime has passed (spire pkg/agent/manager: rotation at half the
 * TTL) and the driver gets the new one on the same stream within moments; the
 * grace absorbs the agent's sync interval and clock skew so that a healthy
 * rotation never flaps the condition.
 */
export const RENEWAL_GRACE_FRACTION = 0.1;

/** The validity of the SVID whose files are on disk. */
export interface CurrentSvid {
  spiffeId: string;
  notBefore: Date;
  notAfter: Date;
}

export interface VolumeHealthInput {
  /** Wall-clock milliseconds since the epoch (certificate times are wall-clock). */
  nowMs: number;
  /** Undefined until known: a resumed volume whose leaf on disk could not be read, before the agent's first response. */
  svid: CurrentSvid | undefined;
  /** The last failure of the volume's SVID stream, cleared by its next message. */
  streamFailure: StreamFailure | undefined;
  /** Path of the agent's admin socket, for describeStreamFailure. */
  agentSocketPath: string;
  /** Set while the newest SVID's write fails and is retried: the volume's `problem` text. */
  writeFailure: string | undefined;
}

export interface VolumeCondition {
  abnormal: boolean;
  message: string;
}

/** Half way through the SVID's lifetime, when the SPIRE agent renews it. */
export function renewalPointMs(svid: CurrentSvid): number {
  const notBefore = svid.notBefore.getTime();
  return notBefore + (svid.notAfter.getTime() - notBefore) / 2;
}

/**
 * Abnormal, most urgent reason first: the SVID on disk has expired; the
 * agent stream is failing (nothing can be renewed); writes are failing (a
 * renewed SVID cannot reach the disk); the SVID is past its renewal point plus
 * the grace without a newer one. Normal otherwise.
 */
export function assessVolumeHealth(input: VolumeHealthInput): VolumeCondition {
  const { nowMs, svid, streamFailure, writeFailure } = input;
  const agentProblem = streamFailure === undefined ? undefined : describeStreamFailure(streamFailure, input.agentSocketPath);
  if (svid !== undefined && nowMs >= svid.notAfter.getTime()) {
    const why = agentProblem ?? writeFailure ?? "the SPIRE agent has not renewed it; check the agent's logs and the registration entry of this pod";
    return {
      abnormal: true,
      message: `the SVID in this volume (${svid.spiffeId}) expired at ${svid.notAfter.toISOString()}, so workloads using it fail their TLS handshakes: ${why}`,
    };
  }
  const validity = svid === undefined ? '' : ` The files hold the SVID ${svid.spiffeId}, valid until ${svid.notAfter.toISOString()}.`;
  if (agentProblem !== undefined) {
    return { abnormal: true, message: `the SVID in this volume cannot be renewed: ${agentProblem}.${validity}` };
  }
  if (writeFailure !== undefined) {
    return { abnormal: true, message: `the renewed SVID has not reached this volume: ${writeFailure}.${validity}` };
  }
  if (svid !== undefined) {
    const renewal = renewalPointMs(svid);
    const graceMs = (svid.notAfter.getTime() - svid.notBefore.getTime()) * RENEWAL_GRACE_FRACTION;
    if (nowMs > renewal + graceMs) {
      return {
        abnormal: true,
        message:
          `the SVID in this volume (${svid.spiffeId}) should have been renewed at ${new Date(renewal).toISOString()} (half its lifetime) ` +
          `but the SPIRE agent has sent no newer one; it expires at ${svid.notAfter.toISOString()}. ` +
          "Check the SPIRE agent's logs (can it reach the server?) and that the pod's registration entry still exists",
      };
    }
    return { abnormal: false, message: `SVID ${svid.spiffeId} valid until ${svid.notAfter.toISOString()}, renewed by the SPIRE agent as due` };
  }
  return { abnormal: false, message: 'the files are in place; waiting for the SPIRE agent to confirm the current SVID' };
}
