/**
 * Command-line flags and environment variables -> one validated, typed Config.
 * Validation happens once, at start-up, with messages that name the flag, the
 * environment variable, the bad value and what is accepted.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as z from 'zod/mini';
import { convertedString } from './validation.js';

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

/** What reading an option needs besides its text. */
export interface ParseContext {
  /** Whether the driver runs as root (--tmpfs=auto). */
  runningAsRoot: boolean;
}

/** Prefixes a problem with the option's flag and environment variable: `--flag (env VAR): problem`. */
type Say = (problem: string) => string;

interface OptionSpec {
  /** The {@link Config} field the option sets. */
  config: string;
  flag: string;
  env: string;
  /** The text used when neither the flag nor the environment variable is set; undefined: the option is required. */
  default: string | undefined;
  /** The --help text. */
  help: string;
  /**
   * Reads the option's text (flag, else environment variable, else default;
   * undefined only for a required option that is missing) into its Config
   * value. Every problem is reported through `say`, which names the option.
   */
  schema: (say: Say, context: ParseContext) => z.ZodMiniType;
  /** Config objects built by hand (the test harnesses) may leave the field out. */
  optionalInConfig?: true;
}

const KUBELET_CALL_TIMEOUT_MS = 120_000;

/**
 * The single table behind the Config type, flag and environment parsing,
 * defaults, validation messages and --help (and the README's configuration
 * reference). A new option is one entry here.
 */
export const OPTIONS = {
  endpoint: {
    /** Unix socket path the CSI gRPC server listens on. */
    config: 'csiSocketPath',
    flag: 'endpoint',
    env: 'CSI_ENDPOINT',
    default: 'unix:///csi/csi.sock',
    help: 'CSI gRPC endpoint: unix:///path/to/csi.sock (a stale socket file is replaced).',
    schema: (say) =>
      convertedString((value, fail) => {
        const socketPath = value.startsWith('unix://')
          ? value.slice('unix://'.length)
          : value.startsWith('unix:')
            ? value.slice('unix:'.length)
            : value;
        if (!path.isAbsolute(socketPath)) {
          return fail(say(`must be unix:///absolute/path.sock, got "${value}"`));
        }
        return path.normalize(socketPath);
      }),
  },
  nodeName: {
    config: 'nodeName',
    flag: 'node-name',
    env: 'NODE_NAME',
    default: undefined,
    help: 'Kubernetes node name: the CSI node id and the k8s:node-name selector. Required (in a DaemonSet, set NODE_NAME from fieldRef spec.nodeName).',
    schema: (say) =>
      z
        .string({ error: say('is required; in a DaemonSet set NODE_NAME from fieldRef spec.nodeName') })
        .check(z.regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, { error: say('must be a Kubernetes node name (lowercase RFC 1123 subdomain)') })),
  },
  driverName: {
    config: 'driverName',
    flag: 'driver-name',
    env: 'SPIRE_CSI_DRIVER_NAME',
    default: 'csi.spire.io',
    help: 'CSI driver name reported by GetPluginInfo; must match the CSIDriver object.',
    schema: (say) =>
      z.string().check(
        z.regex(/^[a-zA-Z][A-Za-z0-9.\-_]{0,61}[a-zA-Z]$/, {
          error: say('must be a CSI driver name: 2-63 characters, letters at both ends, then letters, digits, ".", "-", "_"'),
        }),
      ),
  },
  adminSocket: {
    config: 'agentAdminSocketPath',
    flag: 'admin-socket',
    env: 'SPIRE_ADMIN_SOCKET',
    default: '/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock',
    help: 'SPIRE agent admin socket (Delegated Identity API). The default is where the SPIRE Helm chart puts it on the host with sockets.admin.enabled and sockets.admin.mountOnHost; mount that directory at the same path.',
    schema: (say) =>
      z.pipe(
        z.string().check(z.refine((value: string) => path.isAbsolute(value), { error: say('must be an absolute path') })),
        z.transform((value: string) => path.normalize(value)),
      ),
  },
  stateDir: {
    config: 'stateDir',
    flag: 'state-dir',
    env: 'SPIRE_CSI_STATE_DIR',
    default: '/var/lib/spire-csi-driver',
    help: 'Directory for per-volume metadata (one JSON file per volume). Must survive driver restarts and must not be under /tmp or /var/tmp.',
    schema: (say) =>
      z.pipe(
        z.string().check(
          z.refine((value: string) => path.isAbsolute(value), { error: say('must be an absolute path') }),
          z.refine((value: string) => !/^\/(var\/)?tmp(\/|$)/.test(path.normalize(value)), {
            error: say(
              'must not be under /tmp or /var/tmp: systemd-tmpfiles cleans those and the driver would forget live volumes (cert-manager/csi-lib#18); use e.g. /var/lib/spire-csi-driver',
            ),
          }),
        ),
        z.transform((value: string) => path.normalize(value)),
      ),
  },
  kubeletRootDir: {
    config: 'kubeletRootDir',
    flag: 'kubelet-root-dir',
    env: 'KUBELET_ROOT_DIR',
    default: '/var/lib/kubelet',
    help: "kubelet's root directory; target paths must be <root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount.",
    schema: (say) =>
      z.pipe(
        z.string().check(z.refine((value: string) => path.isAbsolute(value), { error: say('must be an absolute path') })),
        z.transform((value: string) => path.normalize(value).replace(/\/+$/, '') || '/'),
      ),
  },
  publishTimeout: {
    config: 'publishTimeoutMs',
    flag: 'publish-timeout',
    env: 'SPIRE_CSI_PUBLISH_TIMEOUT',
    default: '60s',
    help: "How long NodePublishVolume waits for the first SVID and bundle (e.g. 60s, 1m30s). Must stay below kubelet's 2m call timeout.",
    schema: (say) =>
      convertedString((value, fail) => {
        const ms = parseDuration(value);
        if (ms === undefined || ms <= 0 || ms >= KUBELET_CALL_TIMEOUT_MS) {
          return fail(say(`must be a duration above 0 and below kubelet's 2m call timeout (e.g. 60s), got "${value}"`));
        }
        return ms;
      }),
  },
  tmpfs: {
    /** Mount a size-limited tmpfs per volume (keys never touch the node's disk). */
    config: 'useTmpfs',
    flag: 'tmpfs',
    env: 'SPIRE_CSI_TMPFS',
    default: 'auto',
    help: 'Mount a size-limited nosuid,nodev,noexec tmpfs per volume: true, false or auto (true when running as root).',
    schema: (say, context) =>
      z.pipe(
        z.enum(['true', 'false', 'auto'], { error: say('must be true, false or auto') }),
        z.transform((value: 'true' | 'false' | 'auto') => (value === 'auto' ? context.runningAsRoot : value === 'true')),
      ),
  },
  tmpfsSize: {
    config: 'tmpfsSizeBytes',
    flag: 'tmpfs-size',
    env: 'SPIRE_CSI_TMPFS_SIZE',
    default: '8Mi',
    help: 'Size limit of each volume tmpfs (bytes, or with Ki/Mi/Gi).',
    schema: (say) => sizeSchema(say, 64 * 1024, (value) => `must be a size of at least 64Ki (e.g. 8Mi), got "${value}"`),
  },
  logLevel: {
    config: 'logLevel',
    flag: 'log-level',
    env: 'SPIRE_CSI_LOG_LEVEL',
    default: 'info',
    help: 'fatal, error, warn, info, debug or trace.',
    schema: (say) =>
      z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace'], { error: say('must be one of fatal, error, warn, info, debug, trace') }),
  },
  metricsAddress: {
    /** host:port for Prometheus metrics, or undefined when disabled. */
    config: 'metricsAddress',
    flag: 'metrics-address',
    env: 'SPIRE_CSI_METRICS_ADDRESS',
    default: '',
    help: 'Serve Prometheus metrics on host:port (e.g. :9402); empty disables.',
    schema: (say) =>
      convertedString((value, fail): { host: string; port: number } | undefined => {
        if (value === '') return undefined;
        const match = /^(|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$/.exec(value);
        const port = match ? Number(match[2]) : NaN;
        if (!match || port < 1 || port > 65535) {
          return fail(say(`must be host:port or :port, got "${value}"`));
        }
        return { host: match[1] === '' ? '0.0.0.0' : (match[1] as string).replace(/^\[(.*)\]$/, '$1'), port };
      }),
  },
  maxMessageSize: {
    config: 'maxReceiveMessageBytes',
    flag: 'max-message-size',
    env: 'SPIRE_CSI_MAX_MESSAGE_SIZE',
    default: '32Mi',
    help: "Largest message accepted from the SPIRE agent (large federated bundles exceed gRPC's 4 MiB default, spiffe/spire#3965).",
    schema: (say) => sizeSchema(say, 4 * 1024 * 1024, (value) => `must be a size of at least 4Mi, got "${value}"`),
  },
  maxVolumes: {
    /**
     * Most volumes this node serves at once. parseCommandLine always sets it;
     * a Config built by hand (the test harnesses) may leave it out, which
     * means DEFAULT_MAX_VOLUMES.
     */
    config: 'maxVolumes',
    optionalInConfig: true,
    flag: 'max-volumes',
    env: 'SPIRE_CSI_MAX_VOLUMES',
    default: String(DEFAULT_MAX_VOLUMES),
    help: 'Most volumes this node serves at once, at least 1; reported to kubelet as max_volumes_per_node. NodePublishVolume beyond it (live volumes plus those being published) fails with RESOURCE_EXHAUSTED until one is unpublished. Each volume costs memory: raise the memory limit with it.',
    schema: (say) =>
      convertedString((value, fail) => {
        const trimmed = value.trim();
        const count = /^\d+$/.test(trimmed) ? Number(trimmed) : NaN;
        if (!Number.isSafeInteger(count) || count < 1) {
          return fail(say(`must be a whole number of volumes, at least 1 (e.g. ${DEFAULT_MAX_VOLUMES}), got "${value}"`));
        }
        return count;
      }),
  },
} as const satisfies Record<string, OptionSpec>;

type Options = typeof OPTIONS;
type OptionKey = keyof Options;
type OptionValue<K extends OptionKey> = z.output<ReturnType<Options[K]['schema']>>;
type RequiredOptionKey = { [K in OptionKey]: Options[K] extends { optionalInConfig: true } ? never : K }[OptionKey];
type Simplify<T> = { [K in keyof T]: T[K] } & {};

/**
 * The validated configuration, one field per entry of {@link OPTIONS} (named by
 * its `config`), typed by what its schema produces.
 */
export type Config = Simplify<
  { [K in RequiredOptionKey as Options[K]['config']]: OptionValue<K> } & {
    [K in Exclude<OptionKey, RequiredOptionKey> as Options[K]['config']]?: OptionValue<K>;
  }
>;

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

/** A size of at least `minimumBytes`; `refusal` words the problem with the text given. */
function sizeSchema(say: Say, minimumBytes: number, refusal: (value: string) => string) {
  return convertedString((value, fail) => {
    const bytes = parseSize(value);
    if (bytes === undefined || bytes < minimumBytes) {
      return fail(say(refusal(value)));
    }
    return bytes;
  });
}

function sayFor(spec: OptionSpec): Say {
  return (problem) => `--${spec.flag} (env ${spec.env}): ${problem}`;
}

export function parseCommandLine(argv: readonly string[], env: NodeJS.ProcessEnv, options: ParseContext): ParsedCommandLine {
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

  const specs = Object.entries(OPTIONS) as [OptionKey, OptionSpec][];
  const raw: Record<string, string | undefined> = {};
  const shape: Record<string, z.ZodMiniType> = {};
  for (const [key, spec] of specs) {
    const fromFlag = parsed.values[spec.flag];
    raw[key] = typeof fromFlag === 'string' ? fromFlag : (env[spec.env] ?? spec.default);
    shape[key] = spec.schema(sayFor(spec), options);
  }
  const result = z.object(shape).safeParse(raw);
  if (!result.success) {
    throw new ConfigError(result.error.issues.map((issue) => issue.message).join('\n'));
  }
  const values: Record<string, unknown> = result.data;
  return {
    kind: 'run',
    config: Object.fromEntries(specs.map(([key, spec]) => [spec.config, values[key]])) as Config,
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
