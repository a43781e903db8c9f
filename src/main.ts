#!/usr/bin/env node
/** Entry point: parse the configuration, start the driver, stop cleanly on SIGTERM/SIGINT. */
import { ConfigError, helpText, parseCommandLine } from './config.js';
import { errorMessage } from './errors.js';
import { startDriver } from './driver.js';
import { createLogger } from './observability/logger.js';
import { DRIVER_VERSION } from './version.js';

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseCommandLine(process.argv.slice(2), process.env, { runningAsRoot: process.getuid?.() === 0 });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`spire-csi-driver: invalid configuration:\n${err.message}\n`);
      return 2;
    }
    throw err;
  }
  if (parsed.kind === 'help') {
    process.stdout.write(helpText(DRIVER_VERSION));
    return 0;
  }
  if (parsed.kind === 'version') {
    process.stdout.write(`${DRIVER_VERSION}\n`);
    return 0;
  }
  const { config } = parsed;
  const logger = createLogger({ level: config.logLevel });
  let driver;
  try {
    driver = await startDriver(config, { logger });
  } catch (err) {
    logger.fatal({ err: errorMessage(err) }, 'spire-csi-driver failed to start');
    logger.flush();
    return 1;
  }
  const running = driver;
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      logger.info({ signal }, 'stopping');
      running
        .stop()
        .catch((err: unknown) => logger.error({ err: errorMessage(err) }, 'error while stopping'))
        .finally(resolve);
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  logger.flush();
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`spire-csi-driver: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
