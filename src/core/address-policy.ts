// Which IP addresses webhookd may deliver to. Pure: no DNS, no sockets.
//
// The rule is an allowlist in spirit: an address passes only when it is ordinary global unicast.
// We keep our own tables (rather than trusting ipaddr.js's range names alone) because ipaddr.js
// reports some dangerous prefixes as plain `unicast` — notably IPv4-compatible `::/96` — and because
// the reasons we give must name the range. ipaddr.js's classification is still consulted last, as a
// safety net for anything our tables miss.
import ipaddr from 'ipaddr.js';

export type AddressPolicy = { allowedCidrs: readonly string[] };

export type AddressVerdict = { allowed: true } | { allowed: false; reason: string };

type Ip = ipaddr.IPv4 | ipaddr.IPv6;
type Cidr = [Ip, number];
type BlockedRange = { cidr: string; label: string; net: Cidr };

const ALLOWED: AddressVerdict = { allowed: true };

function blocked(reason: string): AddressVerdict {
  return { allowed: false, reason };
}

// ---------------------------------------------------------------------------------------------
// Parsing

// ipaddr.js's IPv4 parser also accepts inet_aton spellings (`10/8` parses as 0.0.0.10/8, `010.0.0.1`
// is octal). A CIDR in configuration must mean what it looks like, so IPv4 is four-part decimal only.
// Zone ids make no sense in a range.
function parseCidr(entry: string): Cidr | null {
  const match = /^([^/%]+)\/(\d{1,3})$/.exec(entry);
  if (!match) return null;
  const [, addressText = '', prefixText = ''] = match;
  const prefix = Number(prefixText);
  if (ipaddr.IPv4.isValidFourPartDecimal(addressText)) {
    return prefix <= 32 ? [ipaddr.IPv4.parse(addressText), prefix] : null;
  }
  const ip = parseIpv6(addressText);
  return ip !== null && prefix <= 128 ? [ip, prefix] : null;
}

function cidrOrThrow(entry: string): Cidr {
  const net = parseCidr(entry);
  if (net === null) {
    throw new Error(
      `invalid CIDR "${entry}" in allowed CIDR list: expected <address>/<prefix length>, e.g. 127.0.0.0/8 or fd00::/8`,
    );
  }
  return net;
}

/** Parses a comma-separated CIDR list (WEBHOOKD_ALLOWED_CIDRS); empty entries are ignored. */
export function parseCidrList(list: string): string[] {
  return list
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '')
    .map((entry) => {
      const [ip, prefix] = cidrOrThrow(entry);
      return `${ip.toString()}/${prefix}`;
    });
}

// ipaddr.js rewrites the deprecated `::a.b.c.d` spelling into `::ffff:a.b.c.d` (IPv4-compatible
// becomes IPv4-mapped: a different address) and accepts octal/hex in the dotted part. So the dotted
// suffix is converted to two hex groups here, strictly, before ipaddr.js sees the text.
function parseIpv6(text: string): ipaddr.IPv6 | null {
  const zoneAt = text.indexOf('%');
  const address = zoneAt === -1 ? text : text.slice(0, zoneAt);
  const zone = zoneAt === -1 ? '' : text.slice(zoneAt);
  const dotted = /^(.*:)([^:]*\.[^:]*)$/.exec(address);
  let hex = address;
  if (dotted) {
    const [, head = '', quad = ''] = dotted;
    if (!ipaddr.IPv4.isValidFourPartDecimal(quad)) return null;
    const [a = 0, b = 0, c = 0, d = 0] = ipaddr.IPv4.parse(quad).octets;
    hex = `${head}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  return ipaddr.IPv6.isValid(hex + zone) ? ipaddr.IPv6.parse(hex + zone) : null;
}

// Addresses handed to checkAddress come from URL parsing or from the resolver, so only canonical
// spellings are accepted; anything else is refused rather than guessed at.
function parseAddress(address: string): Ip | null {
  const bare = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address;
  if (ipaddr.IPv4.isValidFourPartDecimal(bare)) return ipaddr.IPv4.parse(bare);
  return parseIpv6(bare);
}

/**
 * The normalised IP literal a URL hostname denotes, or null when the host is a DNS name.
 *
 * Meant for `URL.hostname` after WHATWG parsing, which already turns `0x7f.1`, `2130706433`,
 * `0177.0.0.1` and `127.0.0.1.` into `127.0.0.1` and brackets IPv6. It is also lenient with raw
 * input on purpose: anything an inet_aton-style parser would read as IPv4 is treated as an IP
 * literal, so that such a host gets checked as an address instead of slipping through as a "name".
 */
export function parseIpLiteral(host: string): string | null {
  if (host.startsWith('[') && host.endsWith(']')) return plainIpv6(host.slice(1, -1));
  // WHATWG drops one trailing dot from an IPv4 host but keeps `127.0.0.1..` as a *name*;
  // the resolver may still read it as an address, so treat any run of trailing dots alike.
  const trimmed = host.replace(/\.+$/, '');
  if (trimmed.includes(':')) return plainIpv6(trimmed);
  if (trimmed !== '' && ipaddr.IPv4.isValid(trimmed)) return ipaddr.IPv4.parse(trimmed).toString();
  return null;
}

// URLs cannot carry zone ids, so a host with one is not an address a URL could name.
function plainIpv6(text: string): string | null {
  if (text.includes('%')) return null;
  return parseIpv6(text)?.toString() ?? null;
}

// ---------------------------------------------------------------------------------------------
// Range tables. Order matters only where ranges nest: the more specific label comes first.

function table(rows: ReadonlyArray<readonly [cidr: string, label: string]>): BlockedRange[] {
  return rows.map(([cidr, label]) => ({ cidr, label, net: cidrOrThrow(cidr) }));
}

const PRIVATE = 'a private range';
const DOCUMENTATION = 'a documentation range';

const IPV4_BLOCKED = table([
  ['0.0.0.0/8', 'the unspecified ("this network") range'],
  ['10.0.0.0/8', PRIVATE],
  ['100.64.0.0/10', 'the carrier-grade NAT range'],
  ['127.0.0.0/8', 'the loopback range'],
  ['169.254.0.0/16', 'the link-local range'],
  // Public address space, but every Azure VM reaches its host there (WireServer, the guest agent's
  // endpoints, DNS): Azure's counterpart of 169.254.169.254.
  ['168.63.129.16/32', "Azure's platform address"],
  ['172.16.0.0/12', PRIVATE],
  ['192.0.0.0/24', 'the IETF protocol assignments range'],
  ['192.0.2.0/24', DOCUMENTATION],
  ['192.31.196.0/24', 'an AS112 DNS sink range'],
  ['192.52.193.0/24', 'the AMT relay anycast range'],
  ['192.88.99.0/24', 'the 6to4 relay anycast range'],
  ['192.168.0.0/16', PRIVATE],
  ['192.175.48.0/24', 'an AS112 DNS sink range'],
  ['198.18.0.0/15', 'the benchmarking range'],
  ['198.51.100.0/24', DOCUMENTATION],
  ['203.0.113.0/24', DOCUMENTATION],
  ['224.0.0.0/4', 'the multicast range'],
  ['255.255.255.255/32', 'the limited broadcast address'],
  ['240.0.0.0/4', 'the reserved range'],
]);

// Ranges that embed an IPv4 address are not listed here: they are judged by that address
// (see embeddedIpv4). Everything outside 2000::/3 is refused after this table anyway; the
// entries below 2000::/3 exist only to give a precise reason.
const IPV6_BLOCKED = table([
  ['::/128', 'the unspecified address'],
  ['::1/128', 'the loopback address'],
  // Deprecated since RFC 4291 and never used legitimately; some stacks tunnel it to the
  // embedded IPv4 address, and ipaddr.js calls it `unicast`, so it is refused outright.
  ['::/96', 'the deprecated IPv4-compatible range'],
  ['::ffff:0:0:0/96', 'the IPv4-translated range (RFC 6145)'],
  // The local-use NAT64 prefix may embed IPv4 at several offsets, so it cannot be judged by content.
  ['64:ff9b:1::/48', 'the local-use NAT64 range'],
  ['100::/64', 'the discard-only range'],
  ['2001:2::/48', 'the benchmarking range'],
  ['2001:10::/28', 'the ORCHID range'],
  ['2001:20::/28', 'the ORCHIDv2 range'],
  ['2001::/23', 'the IETF protocol assignments range'],
  ['2001:db8::/32', DOCUMENTATION],
  ['2620:4f:8000::/48', 'an AS112 DNS sink range'],
  ['3fff::/20', DOCUMENTATION],
  ['5f00::/16', 'the SRv6 segment identifier range'],
  ['fc00::/7', 'the unique local range'],
  ['fe80::/10', 'the link-local range'],
  ['fec0::/10', 'the deprecated site-local range'],
  ['ff00::/8', 'the multicast range'],
]);

const IPV6_GLOBAL_UNICAST = cidrOrThrow('2000::/3');

function isIpv4(ip: Ip): ip is ipaddr.IPv4 {
  return ip.kind() === 'ipv4';
}

function matches(ip: Ip, [net, prefix]: Cidr): boolean {
  // ipaddr.js throws when asked to match across families.
  return ip.kind() === net.kind() && ip.match(net, prefix);
}

function blockedByRow(row: BlockedRange, shown: string): AddressVerdict {
  const [net, prefix] = row.net;
  const single = prefix === (isIpv4(net) ? 32 : 128);
  return blocked(`address ${shown} ${single ? 'is' : 'is in'} ${row.label} (${row.cidr})`);
}

function findBlockedRange(ip: Ip): BlockedRange | undefined {
  const rows = isIpv4(ip) ? IPV4_BLOCKED : IPV6_BLOCKED;
  return rows.find((row) => matches(ip, row.net));
}

// ---------------------------------------------------------------------------------------------
// IPv6 forms that carry an IPv4 address. Traffic to them ends up at (or next to) that IPv4
// address, so they are exactly as safe as the address they carry.

type Embedded = { ipv4: ipaddr.IPv4; form: string };

function ipv4FromParts(high: number, low: number): ipaddr.IPv4 {
  return new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]);
}

const IPV4_MAPPED = cidrOrThrow('::ffff:0:0/96');
const NAT64_WELL_KNOWN = cidrOrThrow('64:ff9b::/96');
const SIX_TO_FOUR = cidrOrThrow('2002::/16');
const TEREDO = cidrOrThrow('2001::/32');

function embeddedIpv4(ip: ipaddr.IPv6): Embedded[] {
  const [, p1 = 0, p2 = 0, p3 = 0, , , p6 = 0, p7 = 0] = ip.parts;
  if (matches(ip, IPV4_MAPPED)) return [{ ipv4: ipv4FromParts(p6, p7), form: 'IPv4-mapped' }];
  if (matches(ip, NAT64_WELL_KNOWN)) return [{ ipv4: ipv4FromParts(p6, p7), form: 'NAT64' }];
  if (matches(ip, SIX_TO_FOUR)) return [{ ipv4: ipv4FromParts(p1, p2), form: '6to4' }];
  if (matches(ip, TEREDO)) {
    // RFC 4380: the server address is in the clear, the client address is stored inverted.
    return [
      { ipv4: ipv4FromParts(p2, p3), form: 'Teredo server' },
      { ipv4: ipv4FromParts(p6 ^ 0xffff, p7 ^ 0xffff), form: 'Teredo client' },
    ];
  }
  return [];
}

// ---------------------------------------------------------------------------------------------
// The check

/** Parsed once per list: the dispatcher checks every attempt to an IP-literal URL against it. */
const parsedLists = new WeakMap<readonly string[], Cidr[]>();

function parsedAllowedCidrs(policy: AddressPolicy): Cidr[] {
  let parsed = parsedLists.get(policy.allowedCidrs);
  if (!parsed) {
    parsed = policy.allowedCidrs.map(cidrOrThrow);
    parsedLists.set(policy.allowedCidrs, parsed);
  }
  return parsed;
}

function isExempt(ip: Ip, allowed: readonly Cidr[]): boolean {
  return allowed.some((net) => matches(ip, net));
}

function checkIpv4(ip: ipaddr.IPv4, shown: string): AddressVerdict {
  const row = findBlockedRange(ip);
  if (row) return blockedByRow(row, shown);
  return checkLibraryRange(ip, shown);
}

function checkIpv6(ip: ipaddr.IPv6, shown: string, allowed: readonly Cidr[]): AddressVerdict {
  const embedded = embeddedIpv4(ip);
  if (embedded.length > 0) return checkEmbedded(embedded, shown, allowed);

  const row = findBlockedRange(ip);
  if (row) return blockedByRow(row, shown);
  if (!matches(ip, IPV6_GLOBAL_UNICAST)) {
    return blocked(`address ${shown} is outside the global unicast range (2000::/3)`);
  }
  return checkLibraryRange(ip, shown);
}

function checkEmbedded(embedded: readonly Embedded[], shown: string, allowed: readonly Cidr[]): AddressVerdict {
  for (const { ipv4, form } of embedded) {
    const inner = checkIp(ipv4, allowed);
    if (!inner.allowed) {
      return blocked(`address ${shown} embeds ${form} address ${ipv4.toString()}: ${inner.reason}`);
    }
  }
  return ALLOWED;
}

// Safety net: whatever ipaddr.js considers special but our tables missed is refused too.
function checkLibraryRange(ip: Ip, shown: string): AddressVerdict {
  const range = ip.range();
  return range === 'unicast' ? ALLOWED : blocked(`address ${shown} is in a special-purpose range (${range})`);
}

function checkIp(ip: Ip, allowed: readonly Cidr[]): AddressVerdict {
  if (isExempt(ip, allowed)) return ALLOWED;
  const shown = ip.toString();
  return isIpv4(ip) ? checkIpv4(ip, shown) : checkIpv6(ip, shown, allowed);
}

/**
 * May webhookd connect to this address? `address` is an IP literal (IPv4 dotted quad or IPv6,
 * brackets optional). Addresses inside `policy.allowedCidrs` are always allowed.
 */
export function checkAddress(address: string, policy: AddressPolicy): AddressVerdict {
  const ip = parseAddress(address);
  if (ip === null) return blocked(`"${address}" is not an IP address`);
  return checkIp(ip, parsedAllowedCidrs(policy));
}
