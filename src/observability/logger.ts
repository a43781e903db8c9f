/**
 * Structured JSON logs (pino) with stable keys: volume_id, pod, spiffe_id,
 * target_path, selectors, err. Private keys and service-account tokens must
 * never reach a log line (docs/design.md invariant 8): the code never logs them, and
 * these redaction paths catch the shapes they arrive in should a request or a
 * response object be logged by mistake.
 */
import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

export const REDACTED_PATHS = [
  'x509_svid_key',
  '*.x509_svid_key',
  'x509_svids[*].x509_svid_key',
  '*.x509_svids[*].x509_svid_key',
  'secrets',
  '*.secrets',
  'volume_context["csi.storage.k8s.io/serviceAccount.tokens"]',
  '*.volume_context["csi.storage.k8s.io/serviceAccount.tokens"]',
  'keyDer',
  '*.keyDer',
  'privateKey',
  '*.privateKey',
];

export function createLogger(options: { level: string; destination?: DestinationStream; base?: Record<string, unknown> }): Logger {
  return pino(
    {
      level: options.level,
      base: options.base ?? {},
      timestamp: pino.stdTimeFunctions.isoTime,
      messageKey: 'msg',
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACTED_PATHS, censor: '[REDACTED]' },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
