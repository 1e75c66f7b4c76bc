// Auto-TLS as ironic-python-agent does it: a self-signed certificate whose subjectAltName is
// the IP address Ironic calls back on, sent to Ironic as agent_verify_ca. Made with openssl
// (ships in the ramdisk); the key never leaves memory and a temp dir removed right away.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export async function selfSignedCertificate(advertise: string): Promise<{ key: string; cert: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'bmsnap-tls-'));
  try {
    const san = isIP(advertise) ? `IP:${advertise}` : `DNS:${advertise}`;
    await execa('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '90',
      '-subj', `/CN=${hostname().slice(0, 60) || 'bmsnap-agent'}`,
      '-addext', `subjectAltName=critical,${san}`,
    ]);
    return { key: await readFile(join(dir, 'key.pem'), 'utf8'), cert: await readFile(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
