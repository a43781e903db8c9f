// Test workload for the real-cluster tests: mutual TLS using only the files of a csi.spire.io volume, checking the
// peer's SPIFFE ID (its single URI SAN). Runs inside the workload image (plain Node.js, no dependencies).
//
//   node mtls.mjs server PORT PEER_SPIFFE_ID [DIR]   serves on 127.0.0.1:PORT; answers each accepted client with
//                                                    "hello <peer id> from <own id>\n"
//   node mtls.mjs client PORT PEER_SPIFFE_ID [DIR]   connects once, prints the server's answer and
//                                                    "server <id>", exits 0; exits 1 with the reason otherwise
//
// Both sides re-read the volume's files for every connection, so a rotation is picked up without a restart.
// Hostnames are not checked (SVIDs carry SPIFFE IDs, not DNS names); the SPIFFE ID check replaces it.
import fs from 'node:fs';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';

const [mode, portArg, peerId, dir = '/run/svid'] = process.argv.slice(2);
const port = Number(portArg);
if (!['server', 'client'].includes(mode) || !Number.isInteger(port) || !peerId?.startsWith('spiffe://')) {
  console.error('usage: node mtls.mjs server|client PORT PEER_SPIFFE_ID [DIR]');
  process.exit(2);
}

function credentials() {
  return {
    cert: fs.readFileSync(`${dir}/svid.pem`),
    key: fs.readFileSync(`${dir}/svid_key.pem`),
    ca: fs.readFileSync(`${dir}/svid_bundle.pem`),
  };
}

function spiffeIdOf(certPem) {
  const uris = (new X509Certificate(certPem).subjectAltName ?? '')
    .split(', ')
    .filter((name) => name.startsWith('URI:'))
    .map((name) => name.slice(4));
  return uris.length === 1 ? uris[0] : undefined;
}

function ownId() {
  return spiffeIdOf(fs.readFileSync(`${dir}/svid.pem`));
}

function peerIdOf(socket) {
  const peer = socket.getPeerCertificate(false);
  return peer?.raw ? spiffeIdOf(peer.raw) : undefined;
}

if (mode === 'server') {
  const server = tls.createServer({ ...credentials(), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, (socket) => {
    const id = peerIdOf(socket);
    if (id !== peerId) {
      console.error(`refused client ${id}: expected ${peerId}`);
      socket.end(`refused: you are ${id}\n`);
      return;
    }
    console.log(`accepted ${id}`);
    socket.end(`hello ${id} from ${ownId()}\n`);
  });
  // New files for every handshake: a rotated SVID is served at once.
  server.on('secureConnection', () => server.setSecureContext(credentials()));
  server.on('tlsClientError', (err) => console.error(`handshake failed: ${err.message}`));
  server.listen(port, '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port} as ${ownId()}`));
} else {
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    ...credentials(),
    minVersion: 'TLSv1.2',
    checkServerIdentity: (_host, cert) => {
      const id = cert.raw ? spiffeIdOf(cert.raw) : undefined;
      return id === peerId ? undefined : new Error(`server is ${id}, expected ${peerId}`);
    },
  });
  let answer = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => (answer += chunk));
  socket.on('end', () => {
    process.stdout.write(answer);
    console.log(`server ${peerIdOf(socket)}`);
    process.exit(answer.startsWith('hello ') ? 0 : 1);
  });
  socket.on('error', (err) => {
    console.error(`client: ${err.message}`);
    process.exit(1);
  });
  setTimeout(() => {
    console.error('client: no answer within 10 s');
    process.exit(1);
  }, 10_000).unref();
}
