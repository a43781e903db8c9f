/**
 * Wires the parts together: metadata store, agent connection, bundle stream,
 * volume manager, CSI server, metrics. Volumes are resumed before the CSI
 * socket accepts calls, so kubelet never sees a half-started driver.
 */
import type http from 'node:http';
import { DEFAULT_MAX_VOLUMES, type Config } from './config.js';
import { identityService } from './csi/identity-service.js';
import { nodeService } from './csi/node-service.js';
import { startCsiServer, type CsiServer } from './csi/grpc-server.js';
import type { Logger } from './observability/logger.js';
import { DriverMetrics, serveMetrics } from './observability/metrics.js';
import { AgentConnection } from './spire/agent-connection.js';
import { BundleWatcher } from './spire/bundle-watcher.js';
import { DRIVER_VERSION } from './version.js';
import { MetadataStore } from './volumes/metadata-store.js';
import { VolumeManager } from './volumes/volume-manager.js';
import { VolumeStorage } from './volumes/volume-storage.js';

export interface RunningDriver {
  readonly volumes: VolumeManager;
  readonly metrics: DriverMetrics;
  /** Stops serving and closes every stream; volumes, files and mounts stay. */
  stop(): Promise<void>;
}

export async function startDriver(config: Config, options: { logger: Logger; metrics?: DriverMetrics }): Promise<RunningDriver> {
  const { logger } = options;
  const metrics = options.metrics ?? new DriverMetrics({ collectProcessMetrics: config.metricsAddress !== undefined });
  const store = new MetadataStore(config.stateDir, logger);
  await store.init();
  const connection = new AgentConnection({
    socketPath: config.agentAdminSocketPath,
    maxReceiveMessageBytes: config.maxReceiveMessageBytes,
    logger,
  });
  await connection.start();
  const bundles = new BundleWatcher({ connection, logger, metrics });
  const storage = new VolumeStorage({
    useTmpfs: config.useTmpfs,
    tmpfsSizeBytes: config.tmpfsSizeBytes,
    mountSource: config.driverName,
    kubeletRootDir: config.kubeletRootDir,
    logger,
  });
  const volumes = new VolumeManager({
    nodeName: config.nodeName,
    driverName: config.driverName,
    publishTimeoutMs: config.publishTimeoutMs,
    maxVolumes: config.maxVolumes ?? DEFAULT_MAX_VOLUMES,
    connection,
    bundles,
    store,
    storage,
    logger,
    metrics,
  });

  let ready = false;
  let csiServer: CsiServer | undefined;
  let metricsServer: http.Server | undefined;
  try {
    await volumes.resume();
    csiServer = await startCsiServer({
      socketPath: config.csiSocketPath,
      identity: identityService({ driverName: config.driverName, version: DRIVER_VERSION, isReady: () => ready, logger }),
      node: nodeService({ nodeName: config.nodeName, kubeletRootDir: config.kubeletRootDir, volumes, logger, metrics }),
    });
    if (config.metricsAddress) metricsServer = await serveMetrics(metrics, config.metricsAddress);
  } catch (err) {
    await volumes.shutdown();
    bundles.close();
    await connection.close();
    await csiServer?.close();
    throw err;
  }
  ready = true;
  logger.info(
    {
      version: DRIVER_VERSION,
      driver: config.driverName,
      node: config.nodeName,
      endpoint: config.csiSocketPath,
      agent_admin_socket: config.agentAdminSocketPath,
      tmpfs: config.useTmpfs,
      volumes: volumes.volumeCount,
      max_volumes: volumes.maxVolumes,
    },
    'spire-csi-driver started',
  );

  return {
    volumes,
    metrics,
    stop: async () => {
      ready = false;
      await csiServer?.close();
      await volumes.shutdown();
      bundles.close();
      await connection.close();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
      logger.info('spire-csi-driver stopped; volumes stay in place for the next start');
    },
  };
}
