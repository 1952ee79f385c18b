import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkWebhookUrl, type UrlPolicy } from '../../src/core/url-policy.js';

const strict: UrlPolicy = { allowedCidrs: [], allowHttp: false, maxLength: 2048 };
// http allowed, so that a refusal in the corpus below can only come from where the URL points.
const lenient: UrlPolicy = { ...strict, allowHttp: true };

function refusal(raw: string, policy: UrlPolicy): string {
  const verdict = checkWebhookUrl(raw, policy);
  assert.equal(verdict.ok, false, `${raw} should be refused`);
  return verdict.ok ? '' : verdict.reason;
}

function accepted(raw: string, policy: UrlPolicy): URL {
  const verdict = checkWebhookUrl(raw, policy);
  assert.ok(verdict.ok, `${raw} should be accepted: ${verdict.ok ? '' : verdict.reason}`);
  return verdict.url;
}

// Every one of these points inside: this machine, a private network, link-local metadata, or a
// special-purpose range, spelled every way WHATWG URL parsing and ipaddr.js let us.
const INSIDE: readonly string[] = [
  // 127.0.0.1 in numeric disguises
  'http://127.0.0.1/',
  'http://127.0.0.1:80/',
  'http://2130706433/',
  'http://0x7f000001/',
  'http://0x7F000001/',
  'http://017700000001/',
  'http://0177.0.0.1/',
  'http://0000000177.0.0.1/',
  'http://0177.1/',
  'http://127.1/',
  'http://127.0.1/',
  'http://0x7f.1/',
  'http://0x7F.1/',
  'http://0x7f.0x0.0x0.0x1/',
  'http://127.0x0.1/',
  'http://127.000.000.001/',
  'http://127.0.0.1./',
  'http://127.0.0.1../',
  'http://127.0.0.1%2e/',
  'http://%31%32%37.0.0.1/',
  'http://127。0。0。1/',
  'http://１２７.0.0.1/',
  'http://①②⑦.0.0.1/',
  'https://127.0.0.1/',
  // IPv6 loopback, unspecified, and IPv4 embedded in IPv6
  'http://[::1]/',
  'http://[0:0:0:0:0:0:0:1]/',
  'https://[::1]:8443/',
  'http://[::]/',
  'http://[::ffff:127.0.0.1]/',
  'http://[::FFFF:7F00:1]/',
  'http://[::ffff:7f00:1]/',
  'http://[0:0:0:0:0:ffff:127.0.0.1]/',
  'http://[::127.0.0.1]/',
  'http://[::ffff:0:127.0.0.1]/',
  'http://[::ffff:169.254.169.254]/',
  'http://[::ffff:10.0.0.1]/',
  'http://[::ffff:a00:1]/',
  'http://[64:ff9b::a9fe:a9fe]/',
  'http://[64:ff9b::127.0.0.1]/',
  'http://[64:ff9b:1::a00:1]/',
  'http://[2002:7f00:1::]/',
  'http://[2002:a9fe:a9fe::1]/',
  'http://[2001:0:7f00:1::]/',
  // IPv6 local and special ranges
  'http://[fd00::1]/',
  'http://[fc00::1]/',
  'http://[fe80::1]/',
  'http://[fec0::1]/',
  'http://[ff02::1]/',
  'http://[100::1]/',
  'http://[2001:db8::1]/',
  // IPv4 special ranges
  'http://0.0.0.0/',
  'http://0/',
  'http://0x0/',
  'http://169.254.169.254/latest/meta-data/',
  'http://0xa9fea9fe/',
  'http://100.64.0.1/',
  'http://198.18.0.1/',
  'http://224.0.0.1/',
  'http://255.255.255.255/',
  'http://4294967295/',
  'http://10.0.0.1/',
  'http://172.16.0.1/',
  'http://172.31.255.255/',
  'http://192.168.1.1/',
  'http://3232235777/',
  'http://192.0.2.1/',
  'http://198.51.100.7/',
  'http://203.0.113.9/',
  'http://240.0.0.1/',
  'http://192.0.0.1/',
  'http://192.88.99.1/',
  // Names that can only mean an internal host
  'http://localhost/',
  'http://LOCALHOST/',
  'http://localhost./',
  'http://LOCALHOST./',
  'http://localhost:8080/hook',
  'http://foo.localhost/',
  'http://Foo.LocalHost./',
  'https://localhost/',
  'http://printer.local/',
  'http://metadata.google.internal/computeMetadata/v1/',
  'http://METADATA.GOOGLE.INTERNAL./',
  'http://db.internal/',
  'http://router.home.arpa/',
  'http://intranet/',
  'http://metadata/',
];

test(`a corpus of ${INSIDE.length} URLs pointing inside is refused, each for where it points`, () => {
  assert.ok(INSIDE.length >= 45);
  for (const raw of INSIDE) {
    const reason = refusal(raw, lenient);
    assert.match(reason, /^url (points at a non-public address|host )/, `${raw}: ${reason}`);
  }
});

test('refusals name the address and the range', () => {
  assert.equal(
    refusal('http://10.0.0.1/', lenient),
    'url points at a non-public address: address 10.0.0.1 is in a private range (10.0.0.0/8)',
  );
  assert.match(refusal('http://2130706433/', lenient), /127\.0\.0\.1 is in the loopback range \(127\.0\.0\.0\/8\)/);
  assert.match(refusal('http://[::ffff:7f00:1]/', lenient), /embeds IPv4-mapped address 127\.0\.0\.1/);
  assert.match(refusal('http://[64:ff9b::a9fe:a9fe]/', lenient), /169\.254\.169\.254 is in the link-local range/);
  assert.match(refusal('http://127.0.0.1../', lenient), /127\.0\.0\.1 is in the loopback range/);
  assert.match(refusal('http://localhost/', lenient), /"localhost" points at the local machine/);
  assert.match(refusal('http://printer.local/', lenient), /internal name \(\.local\)/);
  assert.match(refusal('http://intranet/', lenient), /single-label name/);
});

test('public URLs are accepted and returned normalised', () => {
  assert.equal(accepted('https://example.com/hook', strict).href, 'https://example.com/hook');
  assert.equal(accepted('https://93.184.216.34/', strict).hostname, '93.184.216.34');
  assert.equal(accepted('https://[2606:4700::1111]/', strict).hostname, '[2606:4700::1111]');
  assert.equal(accepted('https://EXAMPLE.com./hook?x=1', strict).href, 'https://example.com./hook?x=1');
  assert.equal(accepted('https://1572395042/', strict).hostname, '93.184.216.34');
  assert.equal(accepted('https://[::ffff:93.184.216.34]/', strict).hostname, '[::ffff:5db8:d822]');
  assert.equal(accepted('https://[64:ff9b::8.8.8.8]/', strict).hostname, '[64:ff9b::808:808]');
  accepted('https://hooks.example.co.uk:8443/a/b?c=d', strict);
  accepted('https://bücher.example/hook', strict);
});

test('http is refused unless allowHttp', () => {
  assert.equal(refusal('http://example.com/hook', strict), 'url must use https (got http:)');
  accepted('http://example.com/hook', lenient);
});

test('schemes other than http(s) are refused either way', () => {
  for (const raw of ['ftp://example.com/', 'file:///etc/passwd', 'javascript:alert(1)', 'gopher://example.com/', 'ws://example.com/', 'data:text/plain,hi']) {
    assert.match(refusal(raw, strict), /^url must use https \(got [a-z]+:\)$/, raw);
    assert.match(refusal(raw, lenient), /^url must use http or https \(got [a-z]+:\)$/, raw);
  }
});

test('credentials in the URL are refused', () => {
  for (const raw of ['https://user@example.com/', 'https://user:pass@example.com/', 'https://:pass@example.com/', 'https://127.0.0.1:80@example.com/']) {
    assert.equal(refusal(raw, strict), 'url must not contain a username or password', raw);
  }
});

test('fragments are refused, even an empty one', () => {
  for (const raw of ['https://example.com/hook#x', 'https://example.com/#']) {
    assert.match(refusal(raw, strict), /must not contain a fragment/, raw);
  }
});

test('relative, empty and malformed URLs are refused', () => {
  assert.equal(refusal('', strict), 'url is required');
  assert.equal(refusal('   ', strict), 'url is required');
  for (const raw of ['/hook', 'example.com/hook', 'https://', 'https://exa mple.com/', 'http://1.2.3.4.5/', 'http://[::1/', 'http://08/', 'https://[fe80::1%25eth0]/']) {
    assert.match(refusal(raw, lenient), /not a valid absolute URL/, raw);
  }
});

test('length is limited before and after normalisation', () => {
  const policy: UrlPolicy = { ...strict, maxLength: 40 };
  accepted('https://example.com/' + 'a'.repeat(20), policy);
  assert.match(refusal('https://example.com/' + 'a'.repeat(21), policy), /too long \(41 characters, at most 40\)/);
  // 20 characters in, 55 once percent-encoded.
  assert.match(refusal('https://e.co/' + 'é'.repeat(7), policy), /too long once normalised \(55 characters/);
});

test('port 0 is refused', () => {
  assert.match(refusal('https://example.com:0/', strict), /port/);
});

test('allowedCidrs exempts ranges for local testing', () => {
  const local: UrlPolicy = { ...lenient, allowedCidrs: ['127.0.0.0/8'] };
  assert.equal(accepted('http://127.0.0.1:9999/', local).port, '9999');
  accepted('http://[::ffff:127.0.0.1]:9999/', local);
  accepted('http://2130706433:9999/', local);
  accepted('http://localhost:9999/', local);
  accepted('http://foo.localhost:9999/', local);
  // Still refused: outside the exempted range, or https-only.
  assert.match(refusal('http://10.0.0.1/', local), /private range/);
  assert.match(refusal('http://[::1]:9999/', local), /loopback/);
  assert.match(refusal('http://127.0.0.1:9999/', { ...local, allowHttp: false }), /must use https/);
});

test('with an exemption, internal names are left to the connect-time check', () => {
  const compose: UrlPolicy = { ...lenient, allowedCidrs: ['172.16.0.0/12'] };
  accepted('http://receiver:9000/hook', compose);
  accepted('http://receiver.internal/hook', compose);
  // ...but not names of this machine or of the metadata service, which the exemption does not cover.
  assert.match(refusal('http://localhost/', compose), /local machine/);
  assert.match(refusal('http://metadata.google.internal/', compose), /metadata/);
});

// ---------------------------------------------------------------------------------------------
// Properties

const PRIVATE_BLOCKS: ReadonlyArray<readonly [base: number, prefix: number]> = [
  [0x0a000000, 8],
  [0xac100000, 12],
  [0xc0a80000, 16],
  [0x7f000000, 8],
];

const privateIpv4 = fc
  .tuple(fc.constantFrom(...PRIVATE_BLOCKS), fc.nat({ max: 0xffffff }))
  .map(([[base, prefix], offset]) => (base + (offset % 2 ** (32 - prefix))) >>> 0);

function dotted(n: number): string {
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join('.');
}

test('property: URLs to private and loopback IPv4, in any spelling, are refused', () => {
  fc.assert(
    fc.property(privateIpv4, fc.constantFrom('http', 'https'), (n, scheme) => {
      const hosts = [
        dotted(n),
        String(n),
        `0x${n.toString(16)}`,
        `0${n.toString(8)}`,
        `${dotted(n)}.`,
        `[::ffff:${dotted(n)}]`,
        `[::ffff:${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}]`,
      ];
      return hosts.every((host) => !checkWebhookUrl(`${scheme}://${host}/hook`, lenient).ok);
    }),
    { numRuns: 1000 },
  );
});
