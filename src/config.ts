/**
 * Command-line flags and environment variables -> one validated, typed Config.
 * Validation happens once, at start-up, with messages that name the flag, the
 * environment variable, the bad value and what is accepted.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';

export interface Config {
  /** Unix socket path the CSI gRPC server listens on. */
  csiSocketPath: string;
  nodeName: string;
  driverName: string;
  agentAdminSocketPath: string;
  stateDir: string;
  kubeletRootDir: string;
  publishTimeoutMs: number;
  /** Mount a size-limited tmpfs per volume (keys never touch the node's disk). */
  useTmpfs: boolean;
  tmpfsSizeBytes: number;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** host:port for Prometheus metrics, or undefined when disabled. */
  metricsAddress: { host: string; port: number } | undefined;
  maxReceiveMessageBytes: number;
  /**
   * Most volumes this node serves at once (--max-volumes). parseCommandLine
   * always sets it; a Config built by hand (the test harnesses) may leave it
   * out, which means DEFAULT_MAX_VOLUMES.
   */
  maxVolumes?: number;
}

/**
 * Default of --max-volumes. Every volume costs the driver memory for as long as
 * it lives (an SVID stream, its share of the bundle fan-out, a writer): RSS is
 * ~85 MiB settled with 500 volumes (README, Benchmarks; ~70 MiB of it is
 * Node.js, gRPC and protobuf alone), 153 MiB right after publishing those 500,
 * and 140 MiB with 2,000 volumes and still rising. The chart's memory limit is
 * 256Mi (values.yaml driver.resources.limits.memory). At 1,000 volumes those
 * figures put the driver near 105 MiB settled, leaving room for publishing or
 * rotating them all in a burst; without a limit one tenant's thousands of
 * inline volumes get the driver OOM-killed, which stops rotation for every pod
 * on the node. kubelet's default maxPods is 110, so 1,000 still allows about 9
 * volumes per pod.
 */
export const DEFAULT_MAX_VOLUMES = 1000;

interface OptionSpec {
  flag: string;
  env: string;
  default: string | undefined;
  help: string;
}

/** The single table behind --help, the README's configuration reference and parsing. */
export const OPTIONS = {
  endpoint: {
    flag: 'endpoint',
    env: 'CSI_ENDPOINT',
    default: 'unix:///csi/csi.sock',
    help: 'CSI gRPC endpoint: unix:///path/to/csi.sock (a stale socket file is replaced).',
  },
  nodeName: {
    flag: 'node-name',
    env: 'NODE_NAME',
    default: undefined,
    help: 'Kubernetes node name: the CSI node id and the k8s:node-name selector. Required (in a DaemonSet, set NODE_NAME from fieldRef spec.nodeName).',
  },
  driverName: {
    flag: 'driver-name',
    env: 'SPIRE_CSI_DRIVER_NAME',
    default: 'csi.spire.io',
    help: 'CSI driver name reported by GetPluginInfo; must match the CSIDriver object.',
  },
  adminSocket: {
    flag: 'admin-socket',
    env: 'SPIRE_ADMIN_SOCKET',
    default: '/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock',
    help: "SPIRE agent admin socket (Delegated Identity API). The default is where the SPIRE Helm chart puts it on the host with sockets.admin.enabled and sockets.admin.mountOnHost; mount that directory at the same path.",
  },
  stateDir: {
    flag: 'state-dir',
    env: 'SPIRE_CSI_STATE_DIR',
    default: '/var/lib/spire-csi-driver',
    help: 'Directory for per-volume metadata (one JSON file per volume). Must survive driver restarts and must not be under /tmp or /var/tmp.',
  },
  kubeletRootDir: {
    flag: 'kubelet-root-dir',
    env: 'KUBELET_ROOT_DIR',
    default: '/var/lib/kubelet',
    help: "kubelet's root directory; target paths must be <root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount.",
  },
  publishTimeout: {
    flag: 'publish-timeout',
    env: 'SPIRE_CSI_PUBLISH_TIMEOUT',
    default: '60s',
    help: "How long NodePublishVolume waits for the first SVID and bundle (e.g. 60s, 1m30s). Must stay below kubelet's 2m call timeout.",
  },
  tmpfs: {
    flag: 'tmpfs',
    env: 'SPIRE_CSI_TMPFS',
    default: 'auto',
    help: 'Mount a size-limited nosuid,nodev,noexec tmpfs per volume: true, false or auto (true when running as root).',
  },
  tmpfsSize: {
    flag: 'tmpfs-size',
    env: 'SPIRE_CSI_TMPFS_SIZE',
    default: '8Mi',
    help: 'Size limit of each volume tmpfs (bytes, or with Ki/Mi/Gi).',
  },
  logLevel: {
    flag: 'log-level',
    env: 'SPIRE_CSI_LOG_LEVEL',
    default: 'info',
    help: 'fatal, error, warn, info, debug or trace.',
  },
  metricsAddress: {
    flag: 'metrics-address',
    env: 'SPIRE_CSI_METRICS_ADDRESS',
    default: '',
    help: 'Serve Prometheus metrics on host:port (e.g. :9402); empty disables.',
  },
  maxMessageSize: {
    flag: 'max-message-size',
    env: 'SPIRE_CSI_MAX_MESSAGE_SIZE',
    default: '32Mi',
    help: 'Largest message accepted from the SPIRE agent (large federated bundles exceed gRPC\'s 4 MiB default, spiffe/spire#3965).',
  },
  maxVolumes: {
    flag: 'max-volumes',
    env: 'SPIRE_CSI_MAX_VOLUMES',
    default: String(DEFAULT_MAX_VOLUMES),
    help: 'Most volumes this node serves at once, at least 1; reported to kubelet as max_volumes_per_node. NodePublishVolume beyond it (live volumes plus those being published) fails with RESOURCE_EXHAUSTED until one is unpublished. Each volume costs memory: raise the memory limit with it.',
  },
} as const satisfies Record<string, OptionSpec>;

type OptionKey = keyof typeof OPTIONS;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type ParsedCommandLine = { kind: 'help' } | { kind: 'version' } | { kind: 'run'; config: Config };

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "60s", "1m30s", "500ms" or a bare number of seconds -> milliseconds. */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const pattern = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  for (const match of trimmed.matchAll(pattern)) {
    total += Number(match[1]) * (DURATION_UNITS_MS[match[2] as string] ?? NaN);
    consumed += match[0].length;
  }
  return consumed === trimmed.length && consumed > 0 && Number.isFinite(total) ? Math.round(total) : undefined;
}

const SIZE_UNITS: Record<string, number> = { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, k: 1000, M: 1000 ** 2, G: 1000 ** 3 };

/** "8Mi", "512Ki", "1048576" -> bytes. */
export function parseSize(text: string): number | undefined {
  const match = /^(\d+)(Ki|Mi|Gi|k|M|G)?$/.exec(text.trim());
  if (!match) return undefined;
  return Number(match[1]) * (SIZE_UNITS[match[2] ?? ''] ?? NaN);
}

function withSource(key: OptionKey, message: string): string {
  const spec = OPTIONS[key];
  return `--${spec.flag} (env ${spec.env}): ${message}`;
}

const KUBELET_CALL_TIMEOUT_MS = 120_000;

const rawSchema = z.object({
  endpoint: z.string().transform((value, ctx) => {
    const socketPath = value.startsWith('unix://') ? value.slice('unix://'.length) : value.startsWith('unix:') ? value.slice('unix:'.length) : value;
    if (!path.isAbsolute(socketPath)) {
      ctx.addIssue({ code: 'custom', message: withSource('endpoint', `must be unix:///absolute/path.sock, got "${value}"`) });
      return z.NEVER;
    }
    return path.normalize(socketPath);
  }),
  nodeName: z
    .string({ error: withSource('nodeName', 'is required; in a DaemonSet set NODE_NAME from fieldRef spec.nodeName') })
    .regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, {
      error: withSource('nodeName', 'must be a Kubernetes node name (lowercase RFC 1123 subdomain)'),
    }),
  driverName: z.string().regex(/^[a-zA-Z][A-Za-z0-9.\-_]{0,61}[a-zA-Z]$/, {
    error: withSource('driverName', 'must be a CSI driver name: 2-63 characters, letters at both ends, then letters, digits, ".", "-", "_"'),
  }),
  adminSocket: z.string().refine((value) => path.isAbsolute(value), {
    error: withSource('adminSocket', 'must be an absolute path'),
  }),
  stateDir: z
    .string()
    .refine((value) => path.isAbsolute(value), { error: withSource('stateDir', 'must be an absolute path') })
    .refine((value) => !/^\/(var\/)?tmp(\/|$)/.test(path.normalize(value)), {
      error: withSource(
        'stateDir',
        'must not be under /tmp or /var/tmp: systemd-tmpfiles cleans those and the driver would forget live volumes (cert-manager/csi-lib#18); use e.g. /var/lib/spire-csi-driver',
      ),
    })
    .transform((value) => path.normalize(value)),
  kubeletRootDir: z
    .string()
    .refine((value) => path.isAbsolute(value), { error: withSource('kubeletRootDir', 'must be an absolute path') })
    .transform((value) => path.normalize(value).replace(/\/+$/, '') || '/'),
  publishTimeout: z.string().transform((value, ctx) => {
    const ms = parseDuration(value);
    if (ms === undefined || ms <= 0 || ms >= KUBELET_CALL_TIMEOUT_MS) {
      ctx.addIssue({
        code: 'custom',
        message: withSource('publishTimeout', `must be a duration above 0 and below kubelet's 2m call timeout (e.g. 60s), got "${value}"`),
      });
      return z.NEVER;
    }
    return ms;
  }),
  tmpfs: z.enum(['true', 'false', 'auto'], { error: withSource('tmpfs', 'must be true, false or auto') }),
  tmpfsSize: z.string().transform((value, ctx) => {
    const bytes = parseSize(value);
    if (bytes === undefined || bytes < 64 * 1024) {
      ctx.addIssue({ code: 'custom', message: withSource('tmpfsSize', `must be a size of at least 64Ki (e.g. 8Mi), got "${value}"`) });
      return z.NEVER;
    }
    return bytes;
  }),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace'], {
    error: withSource('logLevel', 'must be one of fatal, error, warn, info, debug, trace'),
  }),
  metricsAddress: z.string().transform((value, ctx) => {
    if (value === '') return undefined;
    const match = /^(|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$/.exec(value);
    const port = match ? Number(match[2]) : NaN;
    if (!match || port < 1 || port > 65535) {
      ctx.addIssue({ code: 'custom', message: withSource('metricsAddress', `must be host:port or :port, got "${value}"`) });
      return z.NEVER;
    }
    return { host: match[1] === '' ? '0.0.0.0' : (match[1] as string).replace(/^\[(.*)\]$/, '$1'), port };
  }),
  maxMessageSize: z.string().transform((value, ctx) => {
    const bytes = parseSize(value);
    if (bytes === undefined || bytes < 4 * 1024 * 1024) {
      ctx.addIssue({ code: 'custom', message: withSource('maxMessageSize', `must be a size of at least 4Mi, got "${value}"`) });
      return z.NEVER;
    }
    return bytes;
  }),
  maxVolumes: z.string().transform((value, ctx) => {
    const trimmed = value.trim();
    const count = /^\d+$/.test(trimmed) ? Number(trimmed) : NaN;
    if (!Number.isSafeInteger(count) || count < 1) {
      ctx.addIssue({
        code: 'custom',
        message: withSource('maxVolumes', `must be a whole number of volumes, at least 1 (e.g. ${DEFAULT_MAX_VOLUMES}), got "${value}"`),
      });
      return z.NEVER;
    }
    return count;
  }),
});

export function parseCommandLine(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  options: { runningAsRoot: boolean },
): ParsedCommandLine {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
        ...Object.fromEntries(Object.values(OPTIONS).map((spec) => [spec.flag, { type: 'string' as const }])),
      },
    });
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}; run with --help for the list of flags`);
  }
  if (parsed.values['help']) return { kind: 'help' };
  if (parsed.values['version']) return { kind: 'version' };

  const raw: Record<string, string | undefined> = {};
  for (const [key, spec] of Object.entries(OPTIONS) as [OptionKey, OptionSpec][]) {
    const fromFlag = parsed.values[spec.flag];
    raw[key] = typeof fromFlag === 'string' ? fromFlag : (env[spec.env] ?? spec.default);
  }
  const result = rawSchema.safeParse(raw);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((issue) => issue.message).join('\n'));
  }
  const value = result.data;
  return {
    kind: 'run',
    config: {
      csiSocketPath: value.endpoint,
      nodeName: value.nodeName,
      driverName: value.driverName,
      agentAdminSocketPath: path.normalize(value.adminSocket),
      stateDir: value.stateDir,
      kubeletRootDir: value.kubeletRootDir,
      publishTimeoutMs: value.publishTimeout,
      useTmpfs: value.tmpfs === 'auto' ? options.runningAsRoot : value.tmpfs === 'true',
      tmpfsSizeBytes: value.tmpfsSize,
      logLevel: value.logLevel,
      metricsAddress: value.metricsAddress,
      maxReceiveMessageBytes: value.maxMessageSize,
      maxVolumes: value.maxVolumes,
    },
  };
}

export function helpText(version: string): string {
  const rows = Object.values(OPTIONS as Record<string, OptionSpec>).map((spec) => {
    const fallback = spec.default === undefined ? 'required' : spec.default === '' ? 'default: empty' : `default: ${spec.default}`;
    return `  --${spec.flag}=VALUE\n      env ${spec.env}; ${fallback}\n      ${spec.help}`;
  });
  return [
    `spire-csi-driver ${version}: a CSI node driver that writes each pod's SPIFFE X.509-SVID, key and trust bundle into an inline csi.spire.io volume.`,
    '',
    'Usage: spire-csi-driver [flags]   (flags override environment variables)',
    '',
    ...rows,
    '  --version   print the version and exit',
    '  --help      print this help and exit',
    '',
  ].join('\n');
}
