import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, DEFAULT_MAX_VOLUMES, helpText, OPTIONS, parseCommandLine, parseDuration, parseSize, type Config } from '../../src/config.js';

const BASE_ENV: NodeJS.ProcessEnv = { NODE_NAME: 'node-1' };

/** True when A and B are the same type (not merely assignable either way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** Config as it was written out by hand before it was derived from OPTIONS; driver.ts and the harnesses rely on this shape. */
interface HandWrittenConfig {
  csiSocketPath: string;
  nodeName: string;
  driverName: string;
  agentAdminSocketPath: string;
  stateDir: string;
  kubeletRootDir: string;
  publishTimeoutMs: number;
  useTmpfs: boolean;
  tmpfsSizeBytes: number;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  metricsAddress: { host: string; port: number } | undefined;
  maxReceiveMessageBytes: number;
  maxVolumes?: number;
}

/** Fails to compile when the Config derived from OPTIONS drifts from that shape. */
const CONFIG_SHAPE_UNCHANGED: Equal<Config, HandWrittenConfig> = true;

function run(argv: string[], env: NodeJS.ProcessEnv = BASE_ENV, runningAsRoot = false): Config {
  const parsed = parseCommandLine(argv, env, { runningAsRoot });
  assert.equal(parsed.kind, 'run');
  if (parsed.kind !== 'run') throw new Error('unreachable');
  return parsed.config;
}

/** Runs parseCommandLine expecting a ConfigError; returns its message. */
function configError(argv: string[], env: NodeJS.ProcessEnv = BASE_ENV, runningAsRoot = false): string {
  try {
    parseCommandLine(argv, env, { runningAsRoot });
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.equal(err.name, 'ConfigError');
    return err.message;
  }
  assert.fail(`expected ${JSON.stringify(argv)} to be refused`);
}

describe('defaults', () => {
  test('with only NODE_NAME set every option takes its documented default', () => {
    assert.deepEqual(run([]), {
      csiSocketPath: '/csi/csi.sock',
      nodeName: 'node-1',
      driverName: 'csi.spire.io',
      agentAdminSocketPath: '/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock',
      stateDir: '/var/lib/spire-csi-driver',
      kubeletRootDir: '/var/lib/kubelet',
      publishTimeoutMs: 60_000,
      useTmpfs: false,
      tmpfsSizeBytes: 8 * 1024 * 1024,
      logLevel: 'info',
      metricsAddress: undefined,
      maxReceiveMessageBytes: 32 * 1024 * 1024,
      maxVolumes: 1000,
    } satisfies Config);
  });

  test('the defaults in OPTIONS are the ones applied', () => {
    assert.equal(OPTIONS.endpoint.default, 'unix:///csi/csi.sock');
    assert.equal(OPTIONS.publishTimeout.default, '60s');
    assert.equal(OPTIONS.nodeName.default, undefined);
    assert.equal(OPTIONS.metricsAddress.default, '');
    assert.equal(OPTIONS.maxVolumes.default, String(DEFAULT_MAX_VOLUMES));
  });
});

describe('the Config type', () => {
  test('the fields and types derived from OPTIONS are the hand-written ones (checked by the compiler)', () => {
    assert.equal(CONFIG_SHAPE_UNCHANGED, true);
  });

  test('every option has its own flag, environment variable and Config field', () => {
    const specs = Object.values(OPTIONS);
    for (const field of ['flag', 'env', 'config'] as const) {
      assert.equal(new Set(specs.map((spec) => spec[field])).size, specs.length, field);
    }
    assert.deepEqual(Object.keys(run([])).sort(), specs.map((spec) => spec.config).sort());
  });
});

describe('flags and environment', () => {
  test('environment variables are read', () => {
    const config = run([], {
      NODE_NAME: 'worker-7',
      CSI_ENDPOINT: 'unix:///plugins/csi.spire.io/csi.sock',
      SPIRE_CSI_DRIVER_NAME: 'spire.example.com',
      SPIRE_ADMIN_SOCKET: '/run/spire/admin.sock',
      SPIRE_CSI_STATE_DIR: '/var/lib/other',
      KUBELET_ROOT_DIR: '/data/kubelet',
      SPIRE_CSI_PUBLISH_TIMEOUT: '30s',
      SPIRE_CSI_TMPFS: 'true',
      SPIRE_CSI_TMPFS_SIZE: '1Mi',
      SPIRE_CSI_LOG_LEVEL: 'debug',
      SPIRE_CSI_METRICS_ADDRESS: ':9402',
      SPIRE_CSI_MAX_MESSAGE_SIZE: '64Mi',
      SPIRE_CSI_MAX_VOLUMES: '250',
    });
    assert.deepEqual(config, {
      csiSocketPath: '/plugins/csi.spire.io/csi.sock',
      nodeName: 'worker-7',
      driverName: 'spire.example.com',
      agentAdminSocketPath: '/run/spire/admin.sock',
      stateDir: '/var/lib/other',
      kubeletRootDir: '/data/kubelet',
      publishTimeoutMs: 30_000,
      useTmpfs: true,
      tmpfsSizeBytes: 1024 * 1024,
      logLevel: 'debug',
      metricsAddress: { host: '0.0.0.0', port: 9402 },
      maxReceiveMessageBytes: 64 * 1024 * 1024,
      maxVolumes: 250,
    } satisfies Config);
  });

  test('flags override environment variables', () => {
    const env = { NODE_NAME: 'from-env', SPIRE_CSI_LOG_LEVEL: 'warn', SPIRE_CSI_PUBLISH_TIMEOUT: '10s', SPIRE_CSI_TMPFS: 'false' };
    const config = run(['--node-name=from-flag', '--log-level', 'trace', '--publish-timeout=45s', '--tmpfs=true'], env);
    assert.equal(config.nodeName, 'from-flag');
    assert.equal(config.logLevel, 'trace');
    assert.equal(config.publishTimeoutMs, 45_000);
    assert.equal(config.useTmpfs, true);
  });

  test('an empty flag value still overrides the environment', () => {
    const config = run(['--metrics-address='], { NODE_NAME: 'n', SPIRE_CSI_METRICS_ADDRESS: ':9402' });
    assert.equal(config.metricsAddress, undefined);
  });

  test('an invalid environment value is refused even if the flag for another option is set', () => {
    const message = configError(['--log-level=info'], { NODE_NAME: 'n', SPIRE_CSI_TMPFS: 'maybe' });
    assert.match(message, /--tmpfs \(env SPIRE_CSI_TMPFS\)/);
    assert.match(message, /true, false or auto/);
  });

  test('several problems are reported together', () => {
    const message = configError(['--log-level=loud', '--tmpfs=yes'], {});
    assert.match(message, /--node-name \(env NODE_NAME\): is required/);
    assert.match(message, /--log-level \(env SPIRE_CSI_LOG_LEVEL\)/);
    assert.match(message, /--tmpfs \(env SPIRE_CSI_TMPFS\)/);
  });
});

describe('--help and --version', () => {
  test('--help and -h return help without needing a node name', () => {
    assert.deepEqual(parseCommandLine(['--help'], {}, { runningAsRoot: false }), { kind: 'help' });
    assert.deepEqual(parseCommandLine(['-h'], {}, { runningAsRoot: true }), { kind: 'help' });
  });

  test('--help wins over invalid option values', () => {
    assert.deepEqual(parseCommandLine(['--log-level=loud', '--help'], {}, { runningAsRoot: false }), { kind: 'help' });
  });

  test('--version returns version without needing a node name', () => {
    assert.deepEqual(parseCommandLine(['--version'], {}, { runningAsRoot: false }), { kind: 'version' });
  });

  test('helpText lists every option with its flag, environment variable, default and help', () => {
    const text = helpText('9.9.9-test');
    assert.match(text, /spire-csi-driver 9\.9\.9-test/);
    assert.match(text, /flags override environment variables/);
    for (const spec of Object.values(OPTIONS)) {
      assert.ok(text.includes(`--${spec.flag}=VALUE`), `help lacks --${spec.flag}`);
      assert.ok(text.includes(`env ${spec.env};`), `help lacks env ${spec.env}`);
      assert.ok(text.includes(spec.help), `help lacks the help of --${spec.flag}`);
      const fallback = spec.default === undefined ? 'required' : spec.default === '' ? 'default: empty' : `default: ${spec.default}`;
      assert.ok(text.includes(fallback), `help lacks "${fallback}" for --${spec.flag}`);
    }
    assert.match(text, /--version/);
    assert.match(text, /--help/);
  });

  test('every option in OPTIONS is accepted as a flag', () => {
    for (const spec of Object.values(OPTIONS)) {
      // Refusing the value is fine here; an unknown-flag error is not.
      try {
        parseCommandLine([`--${spec.flag}=x`], BASE_ENV, { runningAsRoot: false });
      } catch (err) {
        assert.ok(err instanceof ConfigError);
        assert.doesNotMatch(err.message, /Unknown option/, spec.flag);
      }
    }
  });
});

describe('refused command lines', () => {
  test('a missing node name says how to set it', () => {
    const message = configError([], {});
    assert.match(message, /--node-name \(env NODE_NAME\): is required/);
    assert.match(message, /fieldRef spec\.nodeName/);
  });

  test('an empty or malformed node name is refused', () => {
    for (const name of ['', 'Node-1', 'node_1', '-node', 'node-', 'a'.repeat(254)]) {
      assert.match(configError([`--node-name=${name}`], {}), /--node-name \(env NODE_NAME\): must be a Kubernetes node name/, name);
    }
    assert.equal(run(['--node-name=ip-10-0-0-1.ec2.internal'], {}).nodeName, 'ip-10-0-0-1.ec2.internal');
  });

  test('an unknown flag is refused and points at --help', () => {
    const message = configError(['--bogus=1']);
    assert.match(message, /Unknown option '--bogus'/);
    assert.match(message, /--help/);
  });

  test('a positional argument is refused', () => {
    assert.match(configError(['extra']), /--help/);
  });

  test('a flag without its value is refused', () => {
    assert.match(configError(['--node-name']), /--help/);
  });

  test('a bad driver name is refused', () => {
    for (const name of ['x', '1csi.spire.io', 'csi.spire.io.', 'csi spire', 'a'.repeat(64)]) {
      assert.match(configError([`--driver-name=${name}`]), /--driver-name \(env SPIRE_CSI_DRIVER_NAME\): must be a CSI driver name/, name);
    }
  });

  test('relative admin socket and kubelet root are refused', () => {
    assert.match(configError(['--admin-socket=admin.sock']), /--admin-socket \(env SPIRE_ADMIN_SOCKET\): must be an absolute path/);
    assert.match(configError(['--kubelet-root-dir=var/lib/kubelet']), /--kubelet-root-dir \(env KUBELET_ROOT_DIR\): must be an absolute path/);
  });

  test('bad log level, tmpfs and sizes are refused', () => {
    assert.match(configError(['--log-level=verbose']), /must be one of fatal, error, warn, info, debug, trace/);
    assert.match(configError(['--tmpfs=yes']), /must be true, false or auto/);
    assert.match(configError(['--tmpfs-size=1Ki']), /--tmpfs-size \(env SPIRE_CSI_TMPFS_SIZE\): must be a size of at least 64Ki.*"1Ki"/);
    assert.match(configError(['--tmpfs-size=8MB']), /at least 64Ki/);
    assert.match(configError(['--max-message-size=1Mi']), /--max-message-size \(env SPIRE_CSI_MAX_MESSAGE_SIZE\): must be a size of at least 4Mi/);
    assert.equal(run(['--tmpfs-size=64Ki']).tmpfsSizeBytes, 65536);
    assert.equal(run(['--max-message-size=4Mi']).maxReceiveMessageBytes, 4 * 1024 * 1024);
  });
});

describe('state directory', () => {
  test('a state directory under /tmp or /var/tmp is refused', () => {
    for (const dir of [
      '/tmp',
      '/tmp/',
      '/tmp/x',
      '/var/tmp',
      '/var/tmp/x',
      '/var/tmp/a/b',
      '//tmp/x',
      '/var//tmp/x',
      '/var/lib/../../tmp/x',
      '/tmp/./x',
    ]) {
      const message = configError([`--state-dir=${dir}`]);
      assert.match(message, /--state-dir \(env SPIRE_CSI_STATE_DIR\): must not be under \/tmp or \/var\/tmp/, dir);
      assert.match(message, /systemd-tmpfiles/, dir);
    }
  });

  test('the same holds when the state directory comes from the environment', () => {
    assert.match(configError([], { NODE_NAME: 'n', SPIRE_CSI_STATE_DIR: '/var/tmp/spire' }), /must not be under \/tmp or \/var\/tmp/);
  });

  test('directories that only look like /tmp are accepted', () => {
    for (const [dir, normalized] of [
      ['/var/lib/x', '/var/lib/x'],
      ['/tmpfoo', '/tmpfoo'],
      ['/var/tmpfoo/x', '/var/tmpfoo/x'],
      ['/data/tmp', '/data/tmp'],
      ['/var/lib//x/', '/var/lib/x/'],
    ] as const) {
      assert.equal(run([`--state-dir=${dir}`]).stateDir, normalized, dir);
    }
  });

  test('a relative state directory is refused', () => {
    assert.match(configError(['--state-dir=state']), /--state-dir \(env SPIRE_CSI_STATE_DIR\): must be an absolute path/);
  });
});

describe('publish timeout', () => {
  test('durations below 2m are accepted', () => {
    assert.equal(run(['--publish-timeout=1m30s']).publishTimeoutMs, 90_000);
    assert.equal(run(['--publish-timeout=119s']).publishTimeoutMs, 119_000);
    assert.equal(run(['--publish-timeout=1m59s999ms']).publishTimeoutMs, 119_999);
    assert.equal(run(['--publish-timeout=90']).publishTimeoutMs, 90_000);
    assert.equal(run(['--publish-timeout=500ms']).publishTimeoutMs, 500);
  });

  test("2m or more is refused: it would outlive kubelet's call", () => {
    for (const value of ['2m', '120s', '120', '2m1s', '1h', '121000ms']) {
      const message = configError([`--publish-timeout=${value}`]);
      assert.match(message, /--publish-timeout \(env SPIRE_CSI_PUBLISH_TIMEOUT\)/, value);
      assert.match(message, /below kubelet's 2m call timeout/, value);
      assert.ok(message.includes(`"${value}"`), value);
    }
  });

  test('zero, negative and malformed durations are refused', () => {
    for (const value of ['0', '0s', '0.0001', '-5s', 'abc', '', '1m 30s', '10x', '5 s']) {
      assert.match(configError([`--publish-timeout=${value}`]), /must be a duration above 0/, value);
    }
  });
});

describe('tmpfs', () => {
  test('auto means tmpfs exactly when running as root', () => {
    assert.equal(run([], BASE_ENV, true).useTmpfs, true);
    assert.equal(run([], BASE_ENV, false).useTmpfs, false);
    assert.equal(run(['--tmpfs=auto'], BASE_ENV, true).useTmpfs, true);
  });

  test('true and false do not depend on the user', () => {
    assert.equal(run(['--tmpfs=true'], BASE_ENV, false).useTmpfs, true);
    assert.equal(run(['--tmpfs=false'], BASE_ENV, true).useTmpfs, false);
  });
});

describe('metrics address', () => {
  test(':port listens on every address', () => {
    assert.deepEqual(run(['--metrics-address=:9402']).metricsAddress, { host: '0.0.0.0', port: 9402 });
  });

  test('host:port', () => {
    assert.deepEqual(run(['--metrics-address=127.0.0.1:9402']).metricsAddress, { host: '127.0.0.1', port: 9402 });
    assert.deepEqual(run(['--metrics-address=localhost:1']).metricsAddress, { host: 'localhost', port: 1 });
    assert.deepEqual(run(['--metrics-address=[::1]:65535']).metricsAddress, { host: '::1', port: 65535 });
  });

  test('empty disables metrics', () => {
    assert.equal(run(['--metrics-address=']).metricsAddress, undefined);
  });

  test('a bad address is refused', () => {
    for (const value of ['9402', 'localhost', ':0', ':65536', ':123456', ':http', '127.0.0.1:', '127.0.0.1:9402/metrics']) {
      const message = configError([`--metrics-address=${value}`]);
      assert.match(message, /--metrics-address \(env SPIRE_CSI_METRICS_ADDRESS\): must be host:port or :port/, value);
      assert.ok(message.includes(`"${value}"`), value);
    }
  });

  test('a host that is not a host name or address is refused', () => {
    for (const value of ['http://127.0.0.1:9402', 'my host:9402']) {
      assert.match(configError([`--metrics-address=${value}`]), /must be host:port or :port/, value);
    }
  });
});

describe('max volumes', () => {
  test('the default is DEFAULT_MAX_VOLUMES, 1000', () => {
    assert.equal(DEFAULT_MAX_VOLUMES, 1000);
    assert.equal(run([]).maxVolumes, 1000);
  });

  test('whole numbers from 1 up are accepted, from the flag or the environment', () => {
    assert.equal(run(['--max-volumes=1']).maxVolumes, 1);
    assert.equal(run(['--max-volumes=3']).maxVolumes, 3);
    assert.equal(run(['--max-volumes', '20000']).maxVolumes, 20_000);
    assert.equal(run(['--max-volumes= 42 ']).maxVolumes, 42);
    assert.equal(run([], { NODE_NAME: 'n', SPIRE_CSI_MAX_VOLUMES: '7' }).maxVolumes, 7);
    assert.equal(run(['--max-volumes=8'], { NODE_NAME: 'n', SPIRE_CSI_MAX_VOLUMES: '7' }).maxVolumes, 8, 'the flag wins');
  });

  test('zero, negative, fractional and malformed counts are refused, naming the flag, the value and the minimum', () => {
    for (const value of ['0', '00', '-1', '1.5', '1e3', '1k', '+5', '0x10', 'unlimited', '', ' ', '9007199254740993']) {
      const message = configError([`--max-volumes=${value}`]);
      assert.match(message, /--max-volumes \(env SPIRE_CSI_MAX_VOLUMES\): must be a whole number of volumes, at least 1 \(e\.g\. 1000\)/, value);
      assert.ok(message.includes(`got "${value}"`), value);
    }
    assert.match(
      configError([], { NODE_NAME: 'n', SPIRE_CSI_MAX_VOLUMES: '0' }),
      /--max-volumes \(env SPIRE_CSI_MAX_VOLUMES\): must be a whole number/,
    );
  });

  test('--help shows the flag, its default and that the limit is reported to kubelet', () => {
    const text = helpText('1.0.0');
    assert.ok(text.includes('--max-volumes=VALUE\n      env SPIRE_CSI_MAX_VOLUMES; default: 1000'), text);
    assert.match(text, /max_volumes_per_node/);
    assert.match(text, /RESOURCE_EXHAUSTED/);
  });
});

describe('CSI endpoint', () => {
  test('unix:///path and unix:/path give the absolute socket path', () => {
    assert.equal(run(['--endpoint=unix:///a.sock']).csiSocketPath, '/a.sock');
    assert.equal(run(['--endpoint=unix:/a.sock']).csiSocketPath, '/a.sock');
    assert.equal(run(['--endpoint=unix:///csi//x/../csi.sock']).csiSocketPath, '/csi/csi.sock');
  });

  test('a bare absolute path is accepted', () => {
    assert.equal(run(['--endpoint=/plugins/csi.sock']).csiSocketPath, '/plugins/csi.sock');
  });

  test('relative and non-unix endpoints are refused', () => {
    for (const value of ['unix://a.sock', 'csi.sock', 'unix:', 'unix://', 'tcp://127.0.0.1:10000', './csi.sock']) {
      const message = configError([`--endpoint=${value}`]);
      assert.match(message, /--endpoint \(env CSI_ENDPOINT\): must be unix:\/\/\/absolute\/path\.sock/, value);
      assert.ok(message.includes(`"${value}"`), value);
    }
  });
});

describe('kubelet root directory', () => {
  test('a trailing slash is dropped and the path normalized', () => {
    assert.equal(run(['--kubelet-root-dir=/var/lib/kubelet/']).kubeletRootDir, '/var/lib/kubelet');
    assert.equal(run(['--kubelet-root-dir=/data//kubelet/./']).kubeletRootDir, '/data/kubelet');
    assert.equal(run(['--kubelet-root-dir=/']).kubeletRootDir, '/');
  });
});

describe('parseDuration', () => {
  test('units and combinations', () => {
    assert.equal(parseDuration('60s'), 60_000);
    assert.equal(parseDuration('1m30s'), 90_000);
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration('1.5s'), 1500);
    assert.equal(parseDuration('1h1m1s1ms'), 3_661_001);
    assert.equal(parseDuration('1m5ms'), 60_005);
    assert.equal(parseDuration(' 60s '), 60_000);
  });

  test('a bare number is seconds', () => {
    assert.equal(parseDuration('90'), 90_000);
    assert.equal(parseDuration('0.5'), 500);
    assert.equal(parseDuration('0'), 0);
  });

  test('anything else is undefined', () => {
    for (const text of ['', ' ', 's', 'ms', '10x', '10s5', '1m30', '-5s', '1m 30s', '1e3', 'Infinity', 'NaN', '1d', '.5s', '5S']) {
      assert.equal(parseDuration(text), undefined, JSON.stringify(text));
    }
  });
});

describe('parseSize', () => {
  test('plain bytes and binary/decimal suffixes', () => {
    assert.equal(parseSize('1048576'), 1_048_576);
    assert.equal(parseSize('8Mi'), 8 * 1024 * 1024);
    assert.equal(parseSize('512Ki'), 512 * 1024);
    assert.equal(parseSize('1Gi'), 1024 ** 3);
    assert.equal(parseSize('1k'), 1000);
    assert.equal(parseSize('2M'), 2_000_000);
    assert.equal(parseSize('1G'), 1_000_000_000);
    assert.equal(parseSize(' 8Mi '), 8 * 1024 * 1024);
  });

  test('anything else is undefined', () => {
    for (const text of ['', 'Mi', '1.5Mi', '8MB', '8mi', '-1', '8 Mi', '1Ti', '0x10']) {
      assert.equal(parseSize(text), undefined, JSON.stringify(text));
    }
  });
});
