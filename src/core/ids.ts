import { randomFillSync } from 'node:crypto';

/**
 * Prefixed, time-ordered identifiers: `<kind>_<26 chars>`.
 *
 * The 26-char body is a ULID (48-bit millisecond timestamp + 80 random bits in Crockford base32),
 * written in lowercase like TypeID so the whole id is one case and sorts the same under byte and
 * locale collations. Because the timestamp leads, ids sort by creation time, which lets the store
 * page by id (keyset pagination) instead of by (created_at, id).
 */

export const ID_KINDS = ['wh', 'evt', 'dlv', 'ten', 'key', 'att', 'aud', 'rpl'] as const;
export type IdKind = (typeof ID_KINDS)[number];

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
const BODY_LENGTH = 26;
const TIME_CHARS = 10;
const MAX_TIME = 2 ** 48 - 1;

/** The nearest time an id can carry: ids hold times from 1970 to 2^48 ms. */
export function clampIdTime(timeMs: number): number {
  return Math.min(Math.max(timeMs, 0), MAX_TIME);
}
const HALF_MAX = 2 ** 40; // the 80 random bits are kept as two 40-bit halves so plain numbers suffice

// 10 chars carry 50 bits but the timestamp has 48, so the first char is at most '7'.
const BODY_RE = /^[0-7][0-9abcdefghjkmnp-tv-z]{25}$/;
const KIND_SET: ReadonlySet<string> = new Set(ID_KINDS);

// Monotonic state: ids minted in the same millisecond (or while the clock steps back) reuse the
// last timestamp and increment the random part, so ids from one process never sort out of order.
let lastTime = -1;
let lastHi = 0;
let lastLo = 0;
/** The millisecond last encoded, and its 10 characters: every id of that millisecond starts with them. */
let encodedTime = -1;
let timeChars = '';
const randomBuf = Buffer.alloc(10);

function encodeBase32(value: number, chars: number): string {
  let out = '';
  let v = value;
  for (let i = 0; i < chars; i++) {
    out = ALPHABET[v % 32] + out;
    v = Math.floor(v / 32);
  }
  return out;
}

/** Every pair of base32 characters, by the 10 bits they carry: newId encodes 40 bits as 4 lookups. */
const PAIRS = Array.from({ length: 1024 }, (_, v) => ALPHABET[v >> 5]! + ALPHABET[v & 31]!);

/** A 40-bit value as 8 characters, 4 lookups where encodeBase32 took 8 steps of string building: newId runs for every delivery and attempt. */
function encode40(value: number): string {
  const hi = Math.floor(value / 1048576);
  const lo = value % 1048576;
  return PAIRS[hi >> 10]! + PAIRS[hi & 1023]! + PAIRS[lo >> 10]! + PAIRS[lo & 1023]!;
}

function readUint40(buf: Buffer, offset: number): number {
  return buf.readUIntBE(offset, 5);
}

/** Encodes an id from its parts; exposed so tests and fixtures can build deterministic ids. */
export function encodeId(kind: IdKind, timeMs: number, random: Uint8Array): string {
  if (!Number.isSafeInteger(timeMs) || timeMs < 0 || timeMs > MAX_TIME) {
    throw new RangeError(`id timestamp out of range: ${timeMs}`);
  }
  if (random.length !== 10) throw new RangeError('id randomness must be 10 bytes');
  const buf = Buffer.from(random.buffer, random.byteOffset, random.byteLength);
  return `${kind}_${encodeBase32(timeMs, TIME_CHARS)}${encode40(readUint40(buf, 0))}${encode40(readUint40(buf, 5))}`;
}

/**
 * The smallest id of `kind` minted at `timeMs`: every id minted from that millisecond on sorts at or
 * after it, so ranges of ids are ranges of time (the store partitions by them).
 */
export function idFloor(kind: IdKind, timeMs: number): string {
  if (!Number.isSafeInteger(timeMs) || timeMs < 0 || timeMs > MAX_TIME) {
    throw new RangeError(`id timestamp out of range: ${timeMs}`);
  }
  return `${kind}_${encodeBase32(timeMs, TIME_CHARS)}`;
}

/** A new id of the given kind, e.g. `evt_01j9z3k8x2m4q6r8t0v2w4y6a8`. */
export function newId(kind: IdKind): string {
  const now = Date.now();
  if (now > lastTime) {
    randomFillSync(randomBuf);
    lastTime = now;
    lastHi = readUint40(randomBuf, 0);
    lastLo = readUint40(randomBuf, 5);
  } else {
    lastLo += 1;
    if (lastLo === HALF_MAX) {
      lastLo = 0;
      lastHi += 1;
      if (lastHi === HALF_MAX) {
        // 2^80 ids in one millisecond cannot happen; borrowing the next millisecond keeps order anyway.
        lastTime += 1;
        randomFillSync(randomBuf);
        lastHi = readUint40(randomBuf, 0);
        lastLo = readUint40(randomBuf, 5);
      }
    }
  }
  if (lastTime !== encodedTime) {
    timeChars = encodeBase32(lastTime, TIME_CHARS);
    encodedTime = lastTime;
  }
  return `${kind}_${timeChars}${encode40(lastHi)}${encode40(lastLo)}`;
}

/** The kind of a well-formed id, or null when the value is not one of ours. */
export function idKind(id: unknown): IdKind | null {
  if (typeof id !== 'string') return null;
  const sep = id.indexOf('_');
  if (sep < 0) return null;
  const kind = id.slice(0, sep);
  if (!KIND_SET.has(kind) || !BODY_RE.test(id.slice(sep + 1))) return null;
  return kind as IdKind;
}

/** True when `id` is a well-formed id of `kind` (used to answer 404 early on junk path params). */
export function isId(id: unknown, kind: IdKind): id is string {
  return typeof id === 'string' && id.length === kind.length + 1 + BODY_LENGTH && idKind(id) === kind;
}

/** When the id was minted (millisecond precision), or null for a malformed id. */
export function idTimestamp(id: unknown): Date | null {
  if (typeof id !== 'string' || idKind(id) === null) return null;
  const body = id.slice(id.indexOf('_') + 1);
  let t = 0;
  for (let i = 0; i < TIME_CHARS; i++) t = t * 32 + ALPHABET.indexOf(body.charAt(i));
  return new Date(t);
}
