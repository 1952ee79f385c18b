// Registration-time check of a webhook URL. Pure: it never resolves names or contacts the URL.
//
// This is the first of two gates. A DNS name that passes here is checked again, address by
// address, at connect time (dispatcher/guarded-lookup.ts), because DNS answers can change after
// registration. The name rules below exist to give users an early, clear refusal for names that
// can only mean an internal host; they are not what keeps delivery safe.
import { checkAddress, parseIpLiteral, type AddressPolicy } from './address-policy.js';

export type UrlPolicy = AddressPolicy & { allowHttp: boolean; maxLength: number };

export type UrlVerdict = { ok: true; url: URL } | { ok: false; reason: string };

type Check = (url: URL, policy: UrlPolicy) => string | null;

function checkScheme(url: URL, policy: UrlPolicy): string | null {
  if (url.protocol === 'https:') return null;
  if (url.protocol === 'http:' && policy.allowHttp) return null;
  const wanted = policy.allowHttp ? 'http or https' : 'https';
  return `url must use ${wanted} (got ${url.protocol})`;
}

// Credentials in a URL leak into logs and API answers, and the signature already authenticates
// webhookd to the receiver.
function checkCredentials(url: URL): string | null {
  return url.username !== '' || url.password !== '' ? 'url must not contain a username or password' : null;
}

// A fragment is never sent over HTTP, so one in a webhook URL is a mistake the receiver would
// never see; refusing it keeps the stored URL equal to what is actually requested.
function checkFragment(url: URL): string | null {
  return url.href.includes('#') ? 'url must not contain a fragment (#…): fragments are never sent to the receiver' : null;
}

function checkLength(url: URL, policy: UrlPolicy): string | null {
  // Normalisation (punycode, percent-encoding) can make the stored form longer than the input.
  const length = url.href.length;
  return length > policy.maxLength ? `url is too long once normalised (${length} characters, at most ${policy.maxLength})` : null;
}

function checkPort(url: URL): string | null {
  return url.port === '0' ? 'url port must be between 1 and 65535 (got 0)' : null;
}

function checkHostPresent(url: URL): string | null {
  return url.hostname === '' ? 'url must have a host' : null;
}

function checkIpHost(url: URL, policy: UrlPolicy): string | null {
  const literal = parseIpLiteral(url.hostname);
  if (literal === null) return null;
  const verdict = checkAddress(literal, policy);
  return verdict.allowed ? null : `url points at a non-public address: ${verdict.reason}`;
}

// Suffixes reserved for private networks (RFC 6762 .local, RFC 8375 .home.arpa, ICANN's .internal)
// plus the conventional .localdomain.
const INTERNAL_SUFFIXES = ['.local', '.internal', '.home.arpa', '.localdomain'];
const METADATA_NAMES = ['metadata.google.internal', 'metadata.goog'];

function isLocalhost(name: string): boolean {
  return name === 'localhost' || name.endsWith('.localhost');
}

function allows(address: string, policy: UrlPolicy): boolean {
  return checkAddress(address, policy).allowed;
}

// Names are compared without the trailing dot: `localhost.` is the same host as `localhost`.
function checkHostName(url: URL, policy: UrlPolicy): string | null {
  if (parseIpLiteral(url.hostname) !== null) return null;
  const name = url.hostname.toLowerCase().replace(/\.+$/, '');
  const shown = `"${url.hostname}"`;

  if (isLocalhost(name)) {
    return allows('127.0.0.1', policy) ? null : `url host ${shown} points at the local machine`;
  }
  if (METADATA_NAMES.includes(name)) {
    return allows('169.254.169.254', policy) ? null : `url host ${shown} is a cloud metadata service`;
  }
  // An operator who exempted some ranges has opted into internal receivers (docker-compose
  // service names, split-horizon DNS); the connect-time check then judges the resolved addresses.
  if (policy.allowedCidrs.length > 0) return null;

  const suffix = INTERNAL_SUFFIXES.find((s) => name.endsWith(s) || name === s.slice(1));
  if (suffix !== undefined) return `url host ${shown} is an internal name (${suffix}) that is not reachable from the internet`;
  if (!name.includes('.')) return `url host ${shown} is a single-label name, which only resolves inside a private network`;
  return null;
}

// Order decides which problem a user hears about first: the most fundamental one.
const CHECKS: readonly Check[] = [
  checkScheme,
  checkCredentials,
  checkFragment,
  checkLength,
  checkHostPresent,
  checkPort,
  checkIpHost,
  checkHostName,
];

function parseAbsolute(raw: string): URL | null {
  try {
    return new URL(raw);
  } catch {
    return null;
  }
}

/** Validates a webhook URL at registration; on success returns the WHATWG-normalised URL to store. */
export function checkWebhookUrl(raw: string, policy: UrlPolicy): UrlVerdict {
  if (raw.trim() === '') return { ok: false, reason: 'url is required' };
  // Checked before parsing so that an enormous input is not parsed at all.
  if (raw.length > policy.maxLength) {
    return { ok: false, reason: `url is too long (${raw.length} characters, at most ${policy.maxLength})` };
  }
  const url = parseAbsolute(raw);
  if (url === null) {
    return { ok: false, reason: 'url is not a valid absolute URL (expected e.g. https://example.com/hook)' };
  }
  for (const check of CHECKS) {
    const reason = check(url, policy);
    if (reason !== null) return { ok: false, reason };
  }
  return { ok: true, url };
}
