import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkAddress, parseCidrList, parseIpLiteral, type AddressPolicy } from '../../src/core/address-policy.js';

const strict: AddressPolicy = { allowedCidrs: [] };

function reasonFor(address: string, policy: AddressPolicy = strict): string {
  const verdict = checkAddress(address, policy);
  assert.equal(verdict.allowed, false, `${address} should be refused`);
  return verdict.allowed ? '' : verdict.reason;
}

function assertAllowed(address: string, policy: AddressPolicy = strict): void {
  assert.deepEqual(checkAddress(address, policy), { allowed: true }, `${address} should be allowed`);
}

// ---------------------------------------------------------------------------------------------
// parseCidrList

test('parseCidrList trims, skips empty entries and normalises', () => {
  assert.deepEqual(parseCidrList(''), []);
  assert.deepEqual(parseCidrList('  '), []);
  assert.deepEqual(parseCidrList(' 127.0.0.0/8 , 10.1.0.0/16,'), ['127.0.0.0/8', '10.1.0.0/16']);
  assert.deepEqual(parseCidrList('FD00:0:0::/8,::1/128'), ['fd00::/8', '::1/128']);
  assert.deepEqual(parseCidrList('::ffff:127.0.0.0/104'), ['::ffff:7f00:0/104']);
  assert.deepEqual(parseCidrList('::127.0.0.0/104'), ['::7f00:0/104']);
});

test('parseCidrList throws naming the bad entry', () => {
  const bad = ['10/8', '127.0.0.1', '10.0.0.0/33', '::/129', 'example.com/8', '010.0.0.0/8', 'fe80::%eth0/64', '1.2.3.4/-1', '1.2.3.4/', '/8', '::ffff:0177.0.0.1/128', '10.0.0.0/8/8'];
  for (const entry of bad) {
    assert.throws(
      () => parseCidrList(`127.0.0.0/8, ${entry}`),
      (error: unknown) => error instanceof Error && error.message.includes(`"${entry}"`),
      entry,
    );
  }
});

// ---------------------------------------------------------------------------------------------
// checkAddress: refusals, with the range each one must name

const REFUSED: ReadonlyArray<readonly [address: string, mentions: string]> = [
  ['0.0.0.0', '0.0.0.0/8'],
  ['0.1.2.3', '0.0.0.0/8'],
  ['127.0.0.1', 'loopback range (127.0.0.0/8)'],
  ['127.255.255.254', '127.0.0.0/8'],
  ['10.0.0.1', 'address 10.0.0.1 is in a private range (10.0.0.0/8)'],
  ['172.16.0.1', 'private range (172.16.0.0/12)'],
  ['172.31.255.255', '172.16.0.0/12'],
  ['192.168.1.1', 'private range (192.168.0.0/16)'],
  ['100.64.0.1', 'carrier-grade NAT range (100.64.0.0/10)'],
  ['100.127.255.255', '100.64.0.0/10'],
  ['169.254.169.254', 'link-local range (169.254.0.0/16)'],
  ['168.63.129.16', "Azure's platform address (168.63.129.16/32)"],
  ['::ffff:168.63.129.16', '168.63.129.16/32'],
  ['192.0.0.1', 'IETF protocol assignments range (192.0.0.0/24)'],
  ['192.0.2.1', 'documentation range (192.0.2.0/24)'],
  ['198.51.100.7', 'documentation range (198.51.100.0/24)'],
  ['203.0.113.9', 'documentation range (203.0.113.0/24)'],
  ['192.88.99.1', '6to4 relay anycast range (192.88.99.0/24)'],
  ['198.18.0.1', 'benchmarking range (198.18.0.0/15)'],
  ['198.19.255.255', '198.18.0.0/15'],
  ['224.0.0.1', 'multicast range (224.0.0.0/4)'],
  ['239.255.255.250', '224.0.0.0/4'],
  ['240.0.0.1', 'reserved range (240.0.0.0/4)'],
  ['255.255.255.255', 'limited broadcast address (255.255.255.255/32)'],
  ['192.175.48.1', 'AS112'],
  ['::', 'unspecified address (::/128)'],
  ['::1', 'loopback address (::1/128)'],
  ['[::1]', '::1/128'],
  ['0:0:0:0:0:0:0:1', '::1/128'],
  ['::127.0.0.1', 'IPv4-compatible range (::/96)'],
  ['::8.8.8.8', 'IPv4-compatible range (::/96)'],
  ['::ffff:127.0.0.1', 'embeds IPv4-mapped address 127.0.0.1'],
  ['::ffff:7f00:1', 'loopback range (127.0.0.0/8)'],
  ['::ffff:10.0.0.1', 'private range (10.0.0.0/8)'],
  ['::ffff:169.254.169.254', '169.254.0.0/16'],
  ['::ffff:0:127.0.0.1', 'IPv4-translated range'],
  ['64:ff9b::a9fe:a9fe', 'embeds NAT64 address 169.254.169.254'],
  ['64:ff9b::127.0.0.1', 'embeds NAT64 address 127.0.0.1'],
  ['64:ff9b:1::a00:1', 'local-use NAT64 range (64:ff9b:1::/48)'],
  ['2002:7f00:1::', 'embeds 6to4 address 127.0.0.1'],
  ['2002:c0a8:101::1', 'embeds 6to4 address 192.168.1.1'],
  ['2001:0:7f00:1::', 'embeds Teredo server address 127.0.0.1'],
  // Client 192.0.2.45, stored inverted as 3fff:fdd2 (the RFC 4380 example).
  ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'embeds Teredo client address 192.0.2.45'],
  ['100::1', 'discard-only range (100::/64)'],
  ['2001:2::1', 'benchmarking range (2001:2::/48)'],
  ['2001:10::1', 'ORCHID range'],
  ['2001:20::1', 'ORCHIDv2 range'],
  ['2001:db8::1', 'documentation range (2001:db8::/32)'],
  ['3fff::1', 'documentation range (3fff::/20)'],
  ['fc00::1', 'unique local range (fc00::/7)'],
  ['fd00::1', 'unique local range (fc00::/7)'],
  ['fe80::1', 'link-local range (fe80::/10)'],
  ['fe80::1%eth0', 'fe80::/10'],
  ['febf::1', 'fe80::/10'],
  ['fec0::1', 'site-local range (fec0::/10)'],
  ['ff02::1', 'multicast range (ff00::/8)'],
  ['5f00::1', '5f00::/16'],
  ['4000::1', 'outside the global unicast range (2000::/3)'],
  ['1::1', 'outside the global unicast range (2000::/3)'],
];

test('checkAddress refuses every non-public range and names it', () => {
  for (const [address, mentions] of REFUSED) {
    const reason = reasonFor(address);
    assert.ok(reason.includes(mentions), `${address}: "${reason}" should mention "${mentions}"`);
  }
});

test('checkAddress refuses strings that are not canonical IP literals', () => {
  for (const text of ['', 'localhost', 'example.com', '0x7f.1', '2130706433', '127.1', '0177.0.0.1', '1.2.3.4.5', '[127.0.0.1']) {
    assert.ok(reasonFor(text).includes('is not an IP address'), text);
  }
});

test('checkAddress allows public unicast addresses', () => {
  for (const address of ['93.184.216.34', '8.8.8.8', '1.1.1.1', '100.63.255.255', '100.128.0.0', '172.15.255.255', '172.32.0.0', '192.167.255.255', '198.17.255.255', '198.20.0.0', '223.255.255.255', '2606:4700::1111', '2001:4860:4860::8888', '2a00:1450:4001:80b::200e', '[2606:4700::1111]']) {
    assertAllowed(address);
  }
});

test('embedded IPv4 forms are allowed when the embedded address is public', () => {
  for (const address of ['::ffff:93.184.216.34', '::ffff:808:808', '64:ff9b::8.8.8.8', '2002:808:808::1', '2001:0:808:808::f7f7:f7f7']) {
    assertAllowed(address);
  }
});

// ---------------------------------------------------------------------------------------------
// allowedCidrs exemption

test('an address inside an allowed CIDR is allowed whatever else', () => {
  const local: AddressPolicy = { allowedCidrs: ['127.0.0.0/8', 'fd00::/8', '169.254.169.254/32'] };
  assertAllowed('127.0.0.1', local);
  assertAllowed('127.9.9.9', local);
  assertAllowed('fd12::1', local);
  assertAllowed('169.254.169.254', local);
  // The exemption follows the address through its IPv6 spellings.
  assertAllowed('::ffff:127.0.0.1', local);
  assertAllowed('64:ff9b::7f00:1', local);
  // ...and nothing else is opened.
  reasonFor('10.0.0.1', local);
  reasonFor('::1', local);
  reasonFor('fc00::1', local);
  reasonFor('169.254.169.253', local);
});

test('an IPv6 CIDR does not exempt IPv4 addresses and vice versa', () => {
  reasonFor('127.0.0.1', { allowedCidrs: ['::/0'] });
  reasonFor('::1', { allowedCidrs: ['0.0.0.0/0'] });
  assertAllowed('::1', { allowedCidrs: ['::1/128'] });
});

test('checkAddress rejects a policy with an invalid CIDR instead of ignoring it', () => {
  assert.throws(() => checkAddress('8.8.8.8', { allowedCidrs: ['10/8'] }), /"10\/8"/);
});

// ---------------------------------------------------------------------------------------------
// parseIpLiteral against what WHATWG URL parsing really produces

test('WHATWG URL already normalises numeric IPv4 spellings (the claim parseIpLiteral relies on)', () => {
  const spellings: Record<string, string> = {
    'http://2130706433/': '127.0.0.1',
    'http://0x7f000001/': '127.0.0.1',
    'http://0177.0.0.1/': '127.0.0.1',
    'http://127.1/': '127.0.0.1',
    'http://0x7f.1/': '127.0.0.1',
    'http://127.0.0.1./': '127.0.0.1',
    'http://%31%32%37.0.0.1/': '127.0.0.1',
    'http://１２７.0.0.1/': '127.0.0.1',
    'http://0xa9fea9fe/': '169.254.169.254',
    'http://[::1]/': '[::1]',
    'http://[0:0:0:0:0:ffff:127.0.0.1]/': '[::ffff:7f00:1]',
    'http://[::127.0.0.1]/': '[::7f00:1]',
    // Two trailing dots make WHATWG treat the host as a *name*: parseIpLiteral must still catch it.
    'http://127.0.0.1../': '127.0.0.1..',
  };
  for (const [url, hostname] of Object.entries(spellings)) {
    assert.equal(new URL(url).hostname, hostname, url);
  }
});

test('parseIpLiteral returns the normalised literal for every IP host', () => {
  const cases: Record<string, string> = {
    'http://2130706433/': '127.0.0.1',
    'http://0x7f.1/': '127.0.0.1',
    'http://127.0.0.1../': '127.0.0.1',
    'http://[::1]/': '::1',
    'http://[::FFFF:127.0.0.1]/': '::ffff:7f00:1',
    'http://[2606:4700:0:0::1111]/': '2606:4700::1111',
    'http://93.184.216.34:8443/': '93.184.216.34',
  };
  for (const [url, literal] of Object.entries(cases)) {
    assert.equal(parseIpLiteral(new URL(url).hostname), literal, url);
  }
});

test('parseIpLiteral reads raw inet_aton spellings as IP literals, not names', () => {
  assert.equal(parseIpLiteral('0x7f.1'), '127.0.0.1');
  assert.equal(parseIpLiteral('2130706433'), '127.0.0.1');
  assert.equal(parseIpLiteral('0177.0.0.1'), '127.0.0.1');
  assert.equal(parseIpLiteral('127.0.0.1.'), '127.0.0.1');
  assert.equal(parseIpLiteral('::1'), '::1');
  // RFC 4291 (and WHATWG) read this as ::7f00:1; ipaddr.js alone would turn it into ::ffff:7f00:1.
  assert.equal(parseIpLiteral('::127.0.0.1'), '::7f00:1');
  assert.equal(parseIpLiteral('[::127.0.0.1]'), parseIpLiteral(new URL('http://[::127.0.0.1]/').hostname));
});

test('parseIpLiteral returns null for DNS names', () => {
  for (const host of ['example.com', 'example.com.', 'localhost', '1.example', 'a1', '0x', '1e5', 'xn--nxasmq6b.com', 'foo.127.0.0.1.nip.io', '[not-ipv6]', '']) {
    assert.equal(parseIpLiteral(host), null, host);
  }
});

// ---------------------------------------------------------------------------------------------
// Properties

function ipv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join('.');
}

function mappedHex(n: number): string {
  return `::ffff:${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
}

const PRIVATE_BLOCKS: ReadonlyArray<readonly [base: number, prefix: number]> = [
  [0x0a000000, 8], // 10/8
  [0xac100000, 12], // 172.16/12
  [0xc0a80000, 16], // 192.168/16
  [0x7f000000, 8], // 127/8
];

const privateIpv4 = fc
  .tuple(fc.constantFrom(...PRIVATE_BLOCKS), fc.nat({ max: 0xffffff }))
  .map(([[base, prefix], offset]) => (base + (offset % 2 ** (32 - prefix))) >>> 0);

test('property: every address in 10/8, 172.16/12, 192.168/16 and 127/8 is refused, in every spelling', () => {
  fc.assert(
    fc.property(privateIpv4, (n) => {
      const dotted = ipv4(n);
      for (const spelling of [dotted, `::ffff:${dotted}`, mappedHex(n), `64:ff9b::${dotted}`]) {
        if (checkAddress(spelling, strict).allowed) return false;
      }
      return true;
    }),
    { numRuns: 2000 },
  );
});

test('property: an IPv4-mapped address gets the same verdict as the IPv4 address it carries', () => {
  fc.assert(
    fc.property(fc.nat({ max: 0xffffffff }), (n) => {
      const dotted = ipv4(n);
      return checkAddress(dotted, strict).allowed === checkAddress(`::ffff:${dotted}`, strict).allowed;
    }),
    { numRuns: 2000 },
  );
});

test('property: parseIpLiteral agrees with WHATWG on decimal and hex integer hosts', () => {
  fc.assert(
    fc.property(fc.nat({ max: 0xffffffff }), (n) => {
      const expected = ipv4(n);
      return (
        parseIpLiteral(new URL(`http://${n}/`).hostname) === expected &&
        parseIpLiteral(new URL(`http://0x${n.toString(16)}/`).hostname) === expected &&
        parseIpLiteral(String(n)) === expected
      );
    }),
    { numRuns: 1000 },
  );
});
