/** csi.v1.Identity: who we are, and whether we are ready. */
import type { Logger } from '../observability/logger.js';
import type { UnaryMethodHandler } from './h2-grpc-server.js';
import { unaryHandler } from './handler.js';

export interface IdentityServiceOptions {
  driverName: string;
  version: string;
  /** True once the driver has resumed its volumes and serves requests. */
  isReady: () => boolean;
  logger: Logger;
}

export function identityService(options: IdentityServiceOptions): Record<string, UnaryMethodHandler> {
  const { logger } = options;
  return {
    GetPluginInfo: unaryHandler('GetPluginInfo', logger, async () => ({
      name: options.driverName,
      vendor_version: options.version,
      manifest: {},
    })),
    // Node-only plugin: no CONTROLLER_SERVICE, no accessibility constraints.
    GetPluginCapabilities: unaryHandler('GetPluginCapabilities', logger, async () => ({ capabilities: [] })),
    // Readiness of the driver itself, not of the SPIRE agent: livenessprobe
    // restarts the container when Probe fails, and restarting the driver cannot
    // bring an agent back (https://github.com/kubernetes-csi/livenessprobe/blob/v2.19.0/README.md).
    Probe: unaryHandler('Probe', logger, async () => ({ ready: { value: options.isReady() } })),
  };
}
