/**
 * A second, stand-alone spire-server of another trust domain, for federation:
 * rendered from the same template (spire-config.ts), on its own loopback port
 * and below its own directory, with no agent. Its CLI sets and shows bundles
 * and mints SVIDs of its trust domain.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { commandSucceeds, SpireServerCli } from './cli.js';
import { ToolProcess } from './processes.js';
import { renderServerConfigForTrustDomain } from './spire-config.js';
import { freeTcpPort, waitFor } from './waits.js';

export class SecondSpireServer {
  private constructor(
    readonly trustDomain: string,
    readonly process: ToolProcess,
    readonly cli: SpireServerCli,
  ) {}

  /** Starts the server below `dir` (short: Unix socket paths hold 107 bytes) and waits until it is healthy. */
  static async start(options: { spireServer: string; dir: string; trustDomain: string; timeoutMs?: number }): Promise<SecondSpireServer> {
    const { spireServer, dir, trustDomain } = options;
    await fsp.mkdir(path.join(dir, 'server', 'data'), { recursive: true });
    const confPath = path.join(dir, 'server.conf');
    await renderServerConfigForTrustDomain(trustDomain, confPath);
    const socketPath = path.join(dir, 'server', 'api.sock');
    const env = { ...process.env, D: dir, SPIRE_SERVER_PORT: String(await freeTcpPort()) };
    const server = ToolProcess.start(`spire-server (${trustDomain})`, spireServer, ['run', '-config', confPath, '-expandEnv'], {
      env,
      logFile: path.join(dir, 'server.log'),
    });
    try {
      await waitFor(
        `spire-server of ${trustDomain} healthcheck`,
        async () => {
          if (!server.running) throw new Error(`spire-server of ${trustDomain} exited:\n${server.logTail()}`);
          return commandSucceeds(spireServer, ['healthcheck', '-socketPath', socketPath]);
        },
        { timeoutMs: options.timeoutMs ?? 30_000, intervalMs: 50 },
      );
    } catch (err) {
      await server.stop('SIGKILL');
      throw err;
    }
    return new SecondSpireServer(trustDomain, server, new SpireServerCli(spireServer, socketPath, dir));
  }

  async close(): Promise<void> {
    await this.process.stop('SIGTERM', 3000);
  }
}
