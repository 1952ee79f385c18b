// Connect-time address check. The dispatcher hands createGuardedLookup's function to undici
// (`new Agent({ connect: { lookup } })`), so the addresses a socket connects to are exactly the
// ones checked here: there is no second resolution an attacker's DNS could answer differently
// (DNS rebinding). Node does not call `lookup` for IP-literal hosts, hence checkHostBeforeConnect.
import dns from 'node:dns';
import net from 'node:net';
import type { LookupFunction } from 'node:net';
import { checkAddress, parseIpLiteral, type AddressPolicy } from '../core/address-policy.js';
import { dnsResolver, type ResolvedAddress, type Resolver } from './dns-resolver.js';

export type { ResolvedAddress, Resolver } from './dns-resolver.js';

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

let systemResolver: Resolver | undefined;
/** Made on first use: it reads /etc/resolv.conf and /etc/hosts then. */
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
