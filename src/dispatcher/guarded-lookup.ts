// Connect-time address check. The dispatcher hands createGuardedLookup's function to undici
// (`new Agent({ connect: { lookup } })`), so the addresses a socket connects to are exactly the
// ones checked here: there is no second resolution an attacker's DNS could answer differently
// (DNS rebinding). Node does not call `lookup` for IP-literal hosts, hence checkHostBeforeConnect.
import dns from 'node:dns';
import net from 'node:net';
import type { LookupFunction } from 'node:net';
import { checkAddress, parseIpLiteral, type AddressPolicy } from '../core/address-policy.js';

export type ResolvedAddress = { address: string; family: number };
export type Resolver = (hostname: string) => Promise<ResolvedAddress[]>;

/** Raised when a host is, or resolves to, an address the policy refuses. `code` is `EBLOCKED`. */
export class BlockedAddressError extends Error {
  readonly code = 'EBLOCKED';
  readonly hostname: string;
  readonly address: string;

  constructor(hostname: string, address: string, reason: string) {
    super(
      hostname === address
        ? `blocked: ${address}: ${reason}`
        : `blocked: ${hostname} resolves to ${address}: ${reason}`,
    );
    this.name = 'BlockedAddressError';
    this.hostname = hostname;
    this.address = address;
  }
}

function notFound(hostname: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), {
    code: 'ENOTFOUND',
    syscall: 'getaddrinfo',
    hostname,
  });
}

/** One query to one server waits this long, and c-ares asks each server this many times. */
const DNS_QUERY_TIMEOUT_MS = 2_000;
const DNS_TRIES = 2;
/** Answers that mean "no address of this family", not a failure to ask. */
const NO_ANSWER = new Set(['ENODATA', 'ENOTFOUND']);
const LOOPBACK: ResolvedAddress[] = [
  { address: '127.0.0.1', family: 4 },
  { address: '::1', family: 6 },
];

/**
 * Asks DNS servers (those of /etc/resolv.conf, or `servers`) through c-ares, on the event loop.
 * Not getaddrinfo: it runs on libuv's thread pool, four threads by default, and a tenant's names whose
 * DNS never answers held each one for 10 s (glibc's 5 s, tried twice), so every other webhook's new
 * connection waited behind them and timed out. /etc/hosts is not read; `localhost` names are loopback
 * (RFC 6761). IPv4 addresses come first, for callers that take one address.
 */
export function dnsResolver(servers?: string[]): Resolver {
  const resolver = new dns.promises.Resolver({ timeout: DNS_QUERY_TIMEOUT_MS, tries: DNS_TRIES });
  if (servers) resolver.setServers(servers);
  return async (hostname) => {
    const name = hostname.toLowerCase().replace(/\.+$/, '');
    if (name === 'localhost' || name.endsWith('.localhost')) return LOOPBACK;
    const answers = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
    const found = answers.flatMap((answer, i) =>
      answer.status === 'fulfilled' ? answer.value.map((address) => ({ address, family: i === 0 ? 4 : 6 })) : [],
    );
    if (found.length > 0) return found;
    // Neither family answered: a real failure (a timeout, a refused query) says more than "not found".
    for (const answer of answers) {
      if (answer.status === 'rejected' && !NO_ANSWER.has((answer.reason as { code?: string }).code ?? '')) throw answer.reason;
    }
    return [];
  };
}

let systemResolver: Resolver | undefined;
/** Made on first use: it reads /etc/resolv.conf then. */
function defaultResolver(): Resolver {
  systemResolver ??= dnsResolver();
  return systemResolver;
}

function familyOf(address: string): number {
  return net.isIP(address);
}

function checkOne(hostname: string, address: string, policy: AddressPolicy): ResolvedAddress {
  const verdict = checkAddress(address, policy);
  if (!verdict.allowed) throw new BlockedAddressError(hostname, address, verdict.reason);
  return { address, family: familyOf(address) };
}

/**
 * Resolves `hostname` and checks every address. One refused address refuses the whole name:
 * connecting to "the good one" would still let an attacker steer some attempts inside.
 */
export async function resolveAndCheck(
  hostname: string,
  policy: AddressPolicy,
  resolve: Resolver = defaultResolver(),
): Promise<ResolvedAddress[]> {
  const literal = parseIpLiteral(hostname);
  if (literal !== null) return [checkOne(hostname, literal, policy)];

  const answers = await resolve(hostname);
  if (answers.length === 0) throw notFound(hostname);
  return answers.map(({ address }) => checkOne(hostname, address, policy));
}

/** Throws BlockedAddressError when the URL's host is an IP literal the policy refuses. */
export function checkHostBeforeConnect(url: URL, policy: AddressPolicy): void {
  const literal = parseIpLiteral(url.hostname);
  if (literal === null) return;
  const verdict = checkAddress(literal, policy);
  if (!verdict.allowed) throw new BlockedAddressError(literal, literal, verdict.reason);
}

function requestedFamily(options: dns.LookupOptions): 0 | 4 | 6 {
  const { family } = options;
  if (family === 4 || family === 'IPv4') return 4;
  if (family === 6 || family === 'IPv6') return 6;
  return 0;
}

function toErrno(error: unknown): NodeJS.ErrnoException {
  return error instanceof Error ? error : new Error(String(error));
}

/**
 * A `dns.lookup`-compatible function for `net.connect({ lookup })` and undici's `connect` options.
 * `resolve` replaces the system resolver (tests use it to play a rebinding DNS server).
 */
export function createGuardedLookup(policy: AddressPolicy, resolve?: Resolver): LookupFunction {
  return (hostname, options, callback) => {
    const family = requestedFamily(options);
    const resolver = resolve ?? defaultResolver();

    resolveAndCheck(hostname, policy, resolver).then(
      (checked) => {
        // Every address was checked above; the family filter only narrows what we hand back.
        const usable = family === 0 ? checked : checked.filter((a) => a.family === family);
        const first = usable[0];
        if (first === undefined) {
          callback(notFound(hostname), options.all ? [] : '');
        } else if (options.all) {
          // Node 20's autoSelectFamily (happy eyeballs) asks for every address at once.
          callback(null, usable);
        } else {
          callback(null, first.address, first.family);
        }
      },
      (error: unknown) => callback(toErrno(error), options.all ? [] : ''),
    );
  };
}
