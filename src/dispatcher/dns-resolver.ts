// How webhook host names become addresses, for the connect-time check (guarded-lookup.ts) and the
// registration check. Not getaddrinfo: it runs on libuv's thread pool, four threads by default, and a
// tenant's names whose DNS never answers held each one for 10 s (glibc's 5 s, tried twice), so every
// other webhook's new connection waited behind them and timed out. c-ares asks the servers on the event
// loop; what getaddrinfo did besides (the hosts file, the resolv.conf search list) is done here.
import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';

export type ResolvedAddress = { address: string; family: number };
export type Resolver = (hostname: string) => Promise<ResolvedAddress[]>;

/** What resolution reads of the system, or a test gives instead. */
export interface DnsSettings {
  /** DNS servers (host or host:port); absent: those of /etc/resolv.conf. */
  servers?: string[];
  /** Domains tried after (or before) a name, as resolv.conf's `search`. */
  search: string[];
  /** A name with fewer dots than this is tried with the search domains first (resolv.conf's `ndots`). */
  ndots: number;
  /** Names the hosts file gives addresses, lower case. */
  hosts: Map<string, ResolvedAddress[]>;
}

/** One query to one server waits this long, and c-ares asks each server this many times. */
const DNS_QUERY_TIMEOUT_MS = 2_000;
const DNS_TRIES = 2;
/** Answers that mean "no address of this family here", not a failure to ask. */
const NO_ANSWER = new Set(['ENODATA', 'ENOTFOUND']);
/**
 * What `localhost` names resolve to (RFC 6761): 127.0.0.1 alone, as the URL policy judges them and as
 * getaddrinfo answered here. With ::1 beside it, the exemption a local setup uses (127.0.0.0/8) refused
 * the whole name.
 */
const LOOPBACK: ResolvedAddress[] = [{ address: '127.0.0.1', family: 4 }];

/** A name as names are compared here: lower case, without trailing dots. */
function canonical(name: string): string {
  return name.toLowerCase().replace(/\.+$/, '');
}

/** `search`/`domain` (the last one wins, as in glibc) and `options ndots:N` of a resolv.conf. */
export function parseResolvConf(text: string): { search: string[]; ndots: number } {
  let search: string[] = [];
  let ndots = 1;
  for (const line of text.split('\n')) {
    const [keyword, ...words] = line.replace(/[#;].*/, '').trim().split(/\s+/);
    if (keyword === 'search' || keyword === 'domain') search = words.map(canonical).filter(Boolean);
    if (keyword === 'options') {
      for (const option of words) {
        const match = /^ndots:(\d+)$/.exec(option);
        if (match) ndots = Math.min(15, Number(match[1]));
      }
    }
  }
  return { search, ndots };
}

/** A hosts file's names and their addresses. */
export function parseHosts(text: string): Map<string, ResolvedAddress[]> {
  const hosts = new Map<string, ResolvedAddress[]>();
  for (const line of text.split('\n')) {
    const [address, ...names] = line.replace(/#.*/, '').trim().split(/\s+/);
    const family = address ? net.isIP(address) : 0;
    if (family === 0) continue;
    for (const name of names) {
      const key = canonical(name);
      const list = hosts.get(key) ?? [];
      if (!list.some((a) => a.address === address)) list.push({ address: address!, family });
      hosts.set(key, list);
    }
  }
  return hosts;
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/**
 * The system's settings, read once (at the resolver's first use): an edit of either file needs a restart.
 * Without a search or domain line, glibc searches the domain of the machine's own name.
 */
export function systemDnsSettings(): DnsSettings {
  const conf = parseResolvConf(readOr('/etc/resolv.conf'));
  const host = canonical(os.hostname());
  if (conf.search.length === 0 && host.includes('.')) conf.search = [host.slice(host.indexOf('.') + 1)];
  return { ...conf, hosts: parseHosts(readOr('/etc/hosts')) };
}

/**
 * A resolver as getaddrinfo with `files dns` would be, but on the event loop: `localhost` names are
 * loopback, the hosts file is read first, then DNS is asked for the name and the search list's
 * candidates in glibc's order (a name with at least `ndots` dots first as it is; a trailing dot means
 * as it is only). IPv4 addresses come first, for callers that take one address.
 */
export function dnsResolver(settings: DnsSettings = systemDnsSettings()): Resolver {
  const resolver = new dns.promises.Resolver({ timeout: DNS_QUERY_TIMEOUT_MS, tries: DNS_TRIES });
  if (settings.servers) resolver.setServers(settings.servers);

  /** Both families of one name; [] when DNS has no address for it. */
  async function ask(name: string): Promise<ResolvedAddress[]> {
    const answers = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
    const found = answers.flatMap((answer, i) =>
      answer.status === 'fulfilled' ? answer.value.map((address) => ({ address, family: i === 0 ? 4 : 6 })) : [],
    );
    if (found.length > 0) return found;
    // Neither family: a real failure (a timeout, a refused query) says more than "not found"; the search
    // below decides what it means for the name.
    for (const answer of answers) {
      if (answer.status === 'rejected' && !NO_ANSWER.has((answer.reason as { code?: string }).code ?? '')) throw answer.reason;
    }
    return [];
  }

  return async (hostname) => {
    const absolute = hostname.endsWith('.');
    const name = canonical(hostname);
    if (name === 'localhost' || name.endsWith('.localhost')) return LOOPBACK;
    const listed = settings.hosts.get(name);
    if (listed) return listed;
    const searched = absolute ? [] : settings.search.map((domain) => `${name}.${domain}`);
    const dots = name.split('.').length - 1;
    const candidates = dots >= settings.ndots ? [name, ...searched] : [...searched, name];
    // glibc's rules: no such name, no address or a server failure moves on to the next candidate; any
    // other failure (a timeout, a refusal, a name too long with the domain) ends the search list, but the
    // name as it is is still asked; only a DNS server that refuses connections ends it all. Thrown at
    // once, a search domain whose DNS was broken failed every webhook (with ndots:5, every public name).
    let failure: unknown;
    let askedAsIs = false;
    for (const candidate of candidates) {
      try {
        askedAsIs ||= candidate === name;
        const found = await ask(candidate);
        if (found.length > 0) return found;
      } catch (err) {
        failure ??= err;
        const code = (err as { code?: string }).code;
        if (code === 'ECONNREFUSED') break;
        if (code === 'ESERVFAIL') continue;
        if (!askedAsIs) {
          const found = await ask(name).catch(() => []);
          if (found.length > 0) return found;
        }
        break;
      }
    }
    if (failure) throw failure;
    return [];
  };
}
