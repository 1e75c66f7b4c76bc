// Agent configuration from the kernel command line (what Ironic's boot interfaces pass).
import t from 'tap';
import { bootifMac, configFromCmdline, parseCmdline } from '../../agent/src/ipa/cmdline.js';

t.test('parses key=value words, bare words are "true"', async (t) => {
  const m = parseCmdline('console=ttyS0 quiet  ipa-api-url=http://10.0.2.100:6385 ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:off\n');
  t.equal(m.get('console'), 'ttyS0');
  t.equal(m.get('quiet'), 'true');
  t.equal(m.get('ip'), '10.0.0.5::10.0.0.1:255.255.255.0::eth0:off', 'values keep their own = and :');
});

t.test('BOOTIF in PXE form and plain', async (t) => {
  t.equal(bootifMac('01-52-54-00-12-34-56'), '52:54:00:12:34:56');
  t.equal(bootifMac('52:54:00:AB:34:56'), '52:54:00:ab:34:56');
  t.equal(bootifMac('nonsense'), undefined);
});

t.test('agent config: Ironic URLs, token, node, callback address and port', async (t) => {
  const c = configFromCmdline(parseCmdline('ipa-api-url=https://a:6385,mdns,https://b:6385 ipa-agent-token=tok ipa-node-uuid=u1 '
    + 'BOOTIF=01-aa-bb-cc-dd-ee-ff ipa-listen-port=17100 ipa-advertise-host=127.0.0.1 ipa-advertise-port=17101 ipa-insecure=1'), ['11:22:33:44:55:66']);
  t.same(c.apiUrls, ['https://a:6385', 'https://b:6385'], 'mdns skipped');
  t.equal(c.agentToken, 'tok');
  t.equal(c.nodeUuid, 'u1');
  t.same(c.macs, ['aa:bb:cc:dd:ee:ff', '11:22:33:44:55:66'], 'BOOTIF first');
  t.equal(c.listenPort, 17100);
  t.equal(c.advertiseHost, '127.0.0.1');
  t.equal(c.advertisePort, 17101, 'ipa-advertise-port (callback through a NAT / port forward)');
  t.equal(c.insecure, true);
  t.equal(c.autoTls, true, 'auto-TLS unless disabled');
});

t.test('bad ports fall back to defaults', async (t) => {
  const c = configFromCmdline(parseCmdline('ipa-api-url=http://x ipa-listen-port=99999 ipa-advertise-port=abc ipa-disable-auto-tls=1'), []);
  t.equal(c.listenPort, 9999);
  t.equal(c.advertisePort, undefined);
  t.equal(c.autoTls, false);
});
