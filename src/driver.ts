/**
 * Wires the parts together: metadata store, agent connection, bundle stream,
 * volume manager, CSI server, metrics. Volumes are resumed before the CSI
 * socket accepts calls, so kubelet never sees a half-started driver. All of it
 * happens under the state directory lock, so that a second instance on the
 * same node waits instead of resuming the same volumes and taking the socket.
 */
import type http from 'node:http';
import { DEFAULT_MAX_VOLUMES, type Config } from './config.js';
import { identityService } from './csi/identity-service.js';
import { nodeService } from './csi/node-service.js';
import { startCsiServer, type CsiServer } from './csi/grpc-server.js';
import { loadLibc, type Libc } from './fs/libc.js';
import { acquireStateDirLock, type StateDirLock } from './fs/state-dir-lock.js';
import { chooseMountMechanism } from './fs/tmpfs.js';
import { MemoryTrimmer } from './memory-trimmer.js';
import type { Logger } from './observability/logger.js';
import type { DriverMetrics } from './observability/metrics.js';
import { disabledMetrics, type Metrics } from './observability/metrics-api.js';
import { AgentConnection } from './spire/agent-connection.js';
import { BundleWatcher } from './spire/bundle-watcher.js';
import { JwtBundleWatcher } from './spire/jwt-bundle-watcher.js';
import { systemClock } from './spire/resilient-stream.js';
import { DRIVER_VERSION } from './version.js';
import { MetadataStore } from './volumes/metadata-store.js';
import { VolumeManager } from './volumes/volume-manager.js';
import { VolumeStorage } from './volumes/volume-storage.js';

export interface RunningDriver {
  readonly volumes: VolumeManager;
  readonly metrics: Metrics;
  /** Stops serving and closes every stream; volumes, files and mounts stay. */
  stop(): Promise<void>;
}

export interface StartDriverOptions {
  logger: Logger;
  metrics?: DriverMetrics;
  /**
   * Gives up waiting for the state directory lock (startDriver rejects with the
   * signal's reason). The driver process does not need it: SIGTERM ends the
   * process, and the kernel drops its lock file descriptor.
   */
  signal?: AbortSignal;
  /** For tests: the C library binding the tmpfs mounts use (default: koffi's; when it fails, mount(8)/umount(8)). */
  loadLibcForMounts?: () => Promise<Libc>;
}

export async function startDriver(config: Config, options: StartDriverOptions): Promise<RunningDriver> {
  // First of all: nothing below may read the state directory or touch the CSI
  // socket while another instance still manages them. This waits for as long
  // as another process holds the lock.
  const lock = await acquireStateDirLock(config.stateDir, { logger: options.logger, signal: options.signal });
  try {
    return await startLocked(config, options, lock);
  } catch (err) {
    await lock.release();
    throw err;
  }
}

async function startLocked(config: Config, options: StartDriverOptions, lock: StateDirLock): Promise<RunningDriver> {
  const { logger } = options;
  // prom-client only when something will scrape it (metrics-api.ts).
  const prometheus = config.metricsAddress ? await import('./observability/metrics.js') : undefined;
  const exported: DriverMetrics | undefined =
    options.metrics ?? (prometheus ? new prometheus.DriverMetrics({ collectProcessMetrics: true }) : undefined);
  const metrics: Metrics = exported ?? disabledMetrics();
  const store = new MetadataStore(config.stateDir, logger);
  await store.init();
  const connection = new AgentConnection({
    socketPath: config.agentAdminSocketPath,
    maxReceiveMessageBytes: config.maxReceiveMessageBytes,
    logger,
  });
  await connection.start();
  const bundles = new BundleWatcher({ connection, logger, metrics });
  // Opens its stream only when a volume asks for JWT-SVIDs.
  const jwtBundles = new JwtBundleWatcher({ connection, logger, metrics });
  const mounting = await chooseMountMechanism({ ...(options.loadLibcForMounts && { loadLibc: options.loadLibcForMounts }) });
  if (mounting.reason !== undefined && config.useTmpfs) {
    logger.warn(
      { reason: mounting.reason },
      'mounting the per-volume tmpfs with mount(8) and umount(8), a process spawn per publish and unpublish, because the mount(2) syscall is unavailable here',
    );
  }
  const storage = new VolumeStorage({
    useTmpfs: config.useTmpfs,
    tmpfsSizeBytes: config.tmpfsSizeBytes,
    mountSource: config.driverName,
    kubeletRootDir: config.kubeletRootDir,
    logger,
    ...(options.loadLibcForMounts && { loadLibc: options.loadLibcForMounts }),
  });
  const trimmer = await startMemoryTrimmer(logger);
  const volumes = new VolumeManager({
    nodeName: config.nodeName,
    driverName: config.driverName,
    publishTimeoutMs: config.publishTimeoutMs,
    maxVolumes: config.maxVolumes ?? DEFAULT_MAX_VOLUMES,
    connection,
    bundles,
    jwtBundles,
    store,
    storage,
    logger,
    metrics,
    ...(trimmer && { onActivity: () => trimmer.activity() }),
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
    if (config.metricsAddress && prometheus && exported) metricsServer = await prometheus.serveMetrics(exported, config.metricsAddress);
  } catch (err) {
    await volumes.shutdown();
    trimmer?.close();
    bundles.close();
    jwtBundles.close();
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
      mount: mounting.mechanism,
      volumes: volumes.volumeCount,
      max_volumes: volumes.maxVolumes,
      state_dir_lock: lock.held ? lock.path : 'unavailable',
      metrics: config.metricsAddress ? formatHostPort(config.metricsAddress) : 'disabled',
    },
    'spire-csi-driver started',
  );

  return {
    volumes,
    metrics,
    stop: async () => {
      ready = false;
      try {
        const socket = await csiServer?.close();
        if (socket === 'replaced') {
          logger.warn(
            { endpoint: config.csiSocketPath },
            'the CSI socket is no longer the one this instance bound: another process (another spire-csi-driver instance on the same ' +
              'endpoint?) replaced it, so it is left in place for kubelet to keep reaching that process; make sure only one driver runs per node',
          );
        }
        await volumes.shutdown();
        trimmer?.close();
        bundles.close();
        jwtBundles.close();
        await connection.close();
        await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
      } finally {
        // Last: the next instance may start on the state and the socket only once this one no longer uses them.
        await lock.release();
      }
      logger.info('spire-csi-driver stopped; volumes stay in place for the next start');
    },
  };
}

/**
 * The trimmer where the C library has malloc_trim (glibc, through koffi);
 * elsewhere none, and the heap is left to the allocator.
 */
async function startMemoryTrimmer(logger: Logger): Promise<MemoryTrimmer | undefined> {
  const libc = await loadLibc().catch(() => undefined);
  const trim = libc?.mallocTrim;
  if (trim === undefined) {
    logger.debug('malloc_trim is not available here; freed C heap memory stays with the allocator');
    return undefined;
  }
  return new MemoryTrimmer({ trim, clock: systemClock, logger });
}

/** host:port, with an IPv6 host in brackets. */
function formatHostPort({ host, port }: { host: string; port: number }): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
