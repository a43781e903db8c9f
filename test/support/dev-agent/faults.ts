/**
 * Fault injection for the development agent: outages (stop, crash, restart),
 * material no real agent should send (an injected SVID, a raw bundle), a
 * refused caller and a slow first answer. The {@link DevAgent} methods of the
 * same names document what each does to a client.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import type { AdminSocketServer } from './admin-socket.js';
import type { DelegatedIdentityService } from './delegated-identity.js';
import type { EntryStore } from './entry-store.js';
import type { RotationTimers } from './rotation.js';
import type { CallerAuthorization, InjectedSvid, IssuedSvid } from './types.js';

export interface FaultTargets {
  store: EntryStore;
  rotation: RotationTimers;
  service: DelegatedIdentityService;
  socket: AdminSocketServer;
  /** Throws once the agent is closed. */
  assertOpen: () => void;
}

export class FaultInjector {
  constructor(private readonly agent: FaultTargets) {}

  // ---------------------------------------------------------------- outages

  /** Connections cut, streams forgotten, socket file removed (a clean stop). */
  async stop(): Promise<void> {
    this.agent.socket.sever();
    this.agent.service.dropAllStreams();
    await fs.rm(this.agent.socket.socketPath, { force: true });
  }

  async crash(): Promise<void> {
    await this.stop();
    await leaveStaleSocket(this.agent.socket.socketPath);
  }

  async resume(): Promise<void> {
    this.agent.assertOpen();
    if (this.agent.socket.listening) return;
    await this.agent.socket.listen();
  }

  async restart(options: { downtimeMs?: number }): Promise<void> {
    await this.stop();
    // Not unref'd: the caller awaits it, and an unref'd timer would let the
    // process exit with the restart half done.
    if (options.downtimeMs) await new Promise((resolve) => setTimeout(resolve, options.downtimeMs));
    await this.resume();
  }

  // --------------------------------------------------------------- material

  replaceSvid(entryId: string, material: InjectedSvid): void {
    this.agent.assertOpen();
    const record = this.agent.store.get(entryId);
    this.agent.rotation.cancel(record);
    this.agent.store.replaceSvid(record, injectedSvid(material));
    this.agent.service.deliverToSubscribersOf([record]);
  }

  injectBundle(trustDomainId: string, raw: Buffer): void {
    this.agent.assertOpen();
    this.agent.service.injectBundle(trustDomainId, raw);
  }

  // ---------------------------------------------------- callers and timing

  setCallerAuthorization(mode: CallerAuthorization): void {
    this.agent.service.callerAuthorization = mode;
  }

  setFirstResponseDelay(ms: number): void {
    this.agent.service.firstResponseDelayMs = ms;
  }
}

/** The material as given; serial and NotAfter read from the leaf when it parses. */
function injectedSvid(material: InjectedSvid): IssuedSvid {
  const leaf = material.certChain[0];
  let serialHex = '';
  let notAfter = new Date(0);
  if (leaf) {
    try {
      const cert = new X509Certificate(leaf);
      serialHex = cert.serialNumber.toLowerCase();
      notAfter = new Date(cert.validTo);
    } catch {
      // Deliberately unparseable material is allowed.
    }
  }
  return {
    certChain: material.certChain.map((der) => Buffer.from(der)),
    keyPkcs8Der: Buffer.from(material.keyPkcs8Der),
    serialHex,
    notAfter,
    expiresAt: material.expiresAt ?? Math.floor(notAfter.getTime() / 1000),
  };
}

/** A socket file whose listener was killed: connecting to it fails with ECONNREFUSED. */
async function leaveStaleSocket(socketPath: string): Promise<void> {
  const child = spawn(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`,
  ]);
  await new Promise((resolve) => child.once('exit', resolve));
}
