/**
 * Structured JSON logs (pino) with stable keys. Every key a line may carry is
 * declared once in LogFields below, and the Logger type only accepts those, so
 * the compiler refuses a misspelt or new key until it is added here. `err` is
 * always the error's message (errorMessage), never the error object.
 *
 * Private keys and service-account tokens must never reach a log line
 * (docs/design.md invariant 8): the code never logs them, and redactSecrets
 * below replaces them, at any depth, should a request or a response object be
 * logged by mistake.
 */
import pino, { type DestinationStream } from 'pino';

/** The keys of our log lines, besides pino's level, time and msg. */
export interface LogFields {
  // What the line is about.
  volume_id?: string;
  pod?: string;
  target_path?: string;
  published_at?: string;
  spiffe_id?: string;
  serial?: string;
  expires_at?: string;
  version?: string;
  selectors?: string;
  trust_domain?: string;
  trust_domains?: string[];
  // The driver itself (the start-up line).
  driver?: string;
  node?: string;
  state_dir_lock?: string;
  /** --metrics-address, or "disabled". */
  metrics?: string;
  signal?: string;
  directory?: string;
  // A gRPC call (handler.ts) or an agent stream.
  method?: string;
  stream?: string;
  code?: string | number;
  // Why it failed: the error's message, and other reasons in words.
  err?: string;
  reason?: string;
  // Durations and counts.
  duration_ms?: number;
  waited_ms?: number;
  /** Of a publish's duration_ms, the part spent waiting for the SPIRE agent's answer. */
  agent_wait_ms?: number;
  retry_in_ms?: number;
  attempt?: number;
  failed_attempts?: number;
  volumes?: number;
  quarantined?: number;
  newer_format?: number;
  svids?: number;
  max_volumes?: number;
  rss_before_mib?: number;
  rss_after_mib?: number;
  // Files and places.
  file?: string;
  quarantined_to?: string;
  record_version?: number;
  supported_version?: number;
  lock_path?: string;
  holder_pid?: number;
  holder_hostname?: string;
  holder_started_at?: string;
  waited_s?: number;
  socket?: string;
  endpoint?: string;
  agent_admin_socket?: string;
  known_in_state_dir?: boolean;
  tmpfs?: boolean;
  /** How tmpfs mounts are made: the mount(2) syscall, or mount(8) when the syscall cannot be loaded. */
  mount?: 'syscall' | 'mount(8)';
}

/**
 * What the code may call. pino's logger satisfies it; object arguments are
 * checked against LogFields (excess-property checks catch unknown keys).
 */
export interface Logger {
  debug(fields: LogFields, message: string): void;
  debug(message: string): void;
  info(fields: LogFields, message: string): void;
  info(message: string): void;
  warn(fields: LogFields, message: string): void;
  warn(message: string): void;
  error(fields: LogFields, message: string): void;
  error(message: string): void;
  fatal(fields: LogFields, message: string): void;
  child(bindings: LogFields): Logger;
  isLevelEnabled(level: LogLevel): boolean;
  flush(): void;
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

/** A duration for a `*_ms` log field: a tenth of a millisecond is as fine as a publish's steps need. */
export function roundMs(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/**
 * `parent.child(bindings)`, made only for a line that is logged. A pino child
 * keeps its bindings serialized, a formatter set and its own prototype chain,
 * ~0.5 KiB; each volume has its logger for its whole life but logs a few
 * lines at publish and one per rotation, so 500 volumes kept ~0.25 MiB of
 * children that were idle (README "Benchmarks"). Lines below the level cost
 * nothing.
 */
export function lazyChild(parent: Logger, bindings: LogFields): Logger {
  return new LazyChildLogger(parent, bindings);
}

class LazyChildLogger implements Logger {
  constructor(
    private readonly parent: Logger,
    private readonly bindings: LogFields,
  ) {}

  private emit(level: 'debug' | 'info' | 'warn' | 'error' | 'fatal', fieldsOrMessage: LogFields | string, message?: string): void {
    if (!this.parent.isLevelEnabled(level)) return;
    const child = this.parent.child(this.bindings);
    if (typeof fieldsOrMessage === 'string') child[level]({}, fieldsOrMessage);
    else child[level](fieldsOrMessage, message ?? '');
  }

  debug(fieldsOrMessage: LogFields | string, message?: string): void {
    this.emit('debug', fieldsOrMessage, message);
  }
  info(fieldsOrMessage: LogFields | string, message?: string): void {
    this.emit('info', fieldsOrMessage, message);
  }
  warn(fieldsOrMessage: LogFields | string, message?: string): void {
    this.emit('warn', fieldsOrMessage, message);
  }
  error(fieldsOrMessage: LogFields | string, message?: string): void {
    this.emit('error', fieldsOrMessage, message);
  }
  fatal(fields: LogFields, message: string): void {
    this.emit('fatal', fields, message);
  }
  child(bindings: LogFields): Logger {
    return lazyChild(this.parent, { ...this.bindings, ...bindings });
  }
  isLevelEnabled(level: LogLevel): boolean {
    return this.parent.isLevelEnabled(level);
  }
  flush(): void {
    this.parent.flush();
  }
}

/**
 * Keys whose values never reach a log line, at any depth: the agent's
 * private key (x509_svid_key as it arrives, keyDer and privateKey as we hold
 * it), a JWT-SVID's token, a CSI request's secrets, and the service-account
 * tokens kubelet puts in volume_context.
 */
const SECRET_KEYS: ReadonlySet<string> = new Set([
  'x509_svid_key',
  'keyDer',
  'privateKey',
  'token',
  'secrets',
  'csi.storage.k8s.io/serviceAccount.tokens',
]);
const CENSOR = '[REDACTED]';
/** As pino's own fallback serializer (safe-stable-stringify) bounds a line: depth, and keys or items per object. */
const MAX_DEPTH = 5;
const MAX_BREADTH = 100;

/**
 * A line's fields with every SECRET_KEYS value replaced by "[REDACTED]".
 *
 * In place of pino's `redact` option: its redaction (@pinojs/redact) parses
 * every path and clones the object on every line, ~46 us a line with
 * --jitless against ~9 us for all the rest of the line, and a publish logs
 * three. Our lines carry strings, numbers, booleans and string arrays
 * (LogFields), so each key is looked at and the fields go out as they are.
 * Only a line carrying an object (never, unless by mistake) is copied, and the
 * copy is what is printed: secrets replaced at any depth rather than at fixed
 * paths, an Error serialized first (pino's err serializer would copy its own
 * properties, secrets included), toJSON honoured, bytes never printed (a key
 * can hide under any name), cycles cut, and depth and breadth bounded.
 */
export function redactSecrets(fields: Record<string, unknown>): Record<string, unknown> {
  for (const key in fields) {
    if (SECRET_KEYS.has(key) || holdsObject(fields[key])) return redactedCopy(fields, 0, new Set()) as Record<string, unknown>;
  }
  return fields;
}

function holdsObject(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  return !Array.isArray(value) || value.some((item) => typeof item === 'object' && item !== null);
}

function redactedCopy(value: unknown, depth: number, ancestors: Set<object>): unknown {
  if (typeof value === 'function') return undefined;
  if (typeof value !== 'object' || value === null) return value;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return `[${value.byteLength} bytes]`;
  if (ancestors.has(value)) return '[Circular]';
  if (depth >= MAX_DEPTH) return Array.isArray(value) ? '[Array]' : '[Object]';
  ancestors.add(value);
  try {
    if (value instanceof Error) return redactedCopy(pino.stdSerializers.err(value), depth, ancestors);
    const toJSON: unknown = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === 'function') return redactedCopy(toJSON.call(value) as unknown, depth + 1, ancestors);
    if (Array.isArray(value)) return value.slice(0, MAX_BREADTH).map((item: unknown) => redactedCopy(item, depth + 1, ancestors));
    const copy: Record<string, unknown> = {};
    for (const key of Object.keys(value).slice(0, MAX_BREADTH)) {
      copy[key] = SECRET_KEYS.has(key) ? CENSOR : redactedCopy((value as Record<string, unknown>)[key], depth + 1, ancestors);
    }
    return copy;
  } catch {
    // A getter or toJSON that throws: the line still goes out, without this value.
    return '[unserializable]';
  } finally {
    ancestors.delete(value);
  }
}

export function createLogger(options: { level: string; destination?: DestinationStream; base?: Record<string, unknown> }): Logger {
  const root = pino(
    {
      level: options.level,
      base: options.base ?? {},
      timestamp: pino.stdTimeFunctions.isoTime,
      messageKey: 'msg',
      formatters: { level: (label) => ({ level: label }), bindings: redactSecrets, log: redactSecrets },
      // redactSecrets has already serialized (and redacted) any Error; pino's
      // err serializer, which runs after it, would serialize that copy again.
      serializers: { err: (value: unknown) => value },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
  // formatters.bindings only sees the root's base: pino's child() swaps it
  // out. A child's bindings are redacted here instead; every child and
  // grandchild is made from the root by Object.create, so inherits this.
  // (Not covered, and not used here: child() options that replace
  // formatters.log, and setBindings(), which passes no formatter.)
  type ChildMethod = (this: unknown, bindings: pino.Bindings, childOptions?: unknown) => unknown;
  const pinoChild = Reflect.get(root, 'child') as ChildMethod;
  const redactingChild: ChildMethod = function child(bindings, childOptions) {
    return pinoChild.call(this, redactSecrets(bindings), childOptions);
  };
  root.child = redactingChild as unknown as typeof root.child;
  return root;
}
