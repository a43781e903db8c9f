/**
 * The end-to-end tests' child processes and mounts, and their cleanup: every
 * tool runs in its own process group and is killed with its group on stop() —
 * and, should the test process die without running its `after` hooks, from a
 * process 'exit' handler, which also unmounts what a crashed test left mounted.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { mountsUnder } from '../../src/fs/mountinfo.js';
import { unmount } from '../../src/fs/tmpfs.js';

/** pids of process groups (and plain pids) that must not outlive this process. */
const liveGroups = new Set<number>();
const livePids = new Set<number>();
const mountRoots = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when the test process dies without running its `after` hooks.
  process.on('exit', () => {
    for (const pgid of liveGroups) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const pid of livePids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const root of mountRoots) {
      unmountAllUnderSync(root);
      if (process.env['KEEP_SCRATCH'] !== '1' && !stillMounted(root)) fs.rmSync(root, { recursive: true, force: true });
    }
  });
  // A signal would end the process without 'exit'; turn it into an exit so the
  // hook above runs (the SPIRE processes live in their own process groups and
  // would not get the terminal's Ctrl-C).
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const) {
    process.once(signal, () => process.exit(code));
  }
}

/** Keeps `pid` from outliving the test process (for children not started here, e.g. the driver). */
export function killOnExit(pid: number | undefined): () => void {
  if (pid === undefined) return () => undefined;
  installExitHook();
  livePids.add(pid);
  return () => {
    livePids.delete(pid);
  };
}

/** Unmounts whatever a crashed test left mounted under `root` when the test process exits. */
export function unmountOnExit(root: string): () => void {
  installExitHook();
  mountRoots.add(root);
  return () => {
    mountRoots.delete(root);
  };
}

function mountPointsUnderSync(root: string): string[] {
  let mountinfo: string;
  try {
    mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  return mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((p): p is string => p !== undefined && (p === root || p.startsWith(root + '/')));
}

function stillMounted(root: string): boolean {
  return mountPointsUnderSync(root).length > 0;
}

function unmountAllUnderSync(root: string): void {
  for (const point of mountPointsUnderSync(root).reverse()) spawnSync('umount', [point], { stdio: 'ignore' });
}

/** Unmounts (deepest first) everything mounted at or below `root`. */
export async function unmountAllUnder(root: string): Promise<void> {
  for (const mount of (await mountsUnder(root)).reverse()) {
    await unmount(mount.mountPoint).catch(() => undefined);
  }
}

/** A long-running tool in its own process group, logging to a file. */
export class ToolProcess {
  private exitPromise: Promise<void>;
  private exited = false;

  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', () => {
        this.exited = true;
        if (child.pid !== undefined) liveGroups.delete(child.pid);
        resolve();
      });
      child.once('error', () => {
        this.exited = true;
        resolve();
      });
    });
  }

  static start(name: string, command: string, args: string[], options: { env?: NodeJS.ProcessEnv; logFile: string }): ToolProcess {
    installExitHook();
    const log = fs.openSync(options.logFile, 'a');
    try {
      // detached: its own process group, so the whole group can be killed.
      const child = spawn(command, args, { env: options.env ?? process.env, stdio: ['ignore', log, log], detached: true });
      if (child.pid !== undefined) liveGroups.add(child.pid);
      return new ToolProcess(name, child, options.logFile);
    } finally {
      fs.closeSync(log);
    }
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Signals the process group and waits for the leader to exit; SIGKILL after `graceMs`. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
    const pid = this.child.pid;
    if (this.exited || pid === undefined) return;
    signalGroup(pid, signal);
    const timer = setTimeout(() => signalGroup(pid, 'SIGKILL'), graceMs);
    await this.exitPromise;
    clearTimeout(timer);
    // Anything else left in the group.
    signalGroup(pid, 'SIGKILL');
  }

  logTail(lines = 30): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  log(): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // the group is gone
  }
}
