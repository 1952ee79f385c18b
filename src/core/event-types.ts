/**
 * Event types are dotted names (`document.created`). Subscriptions may end in `.*` (any deeper
 * name under that prefix) or be exactly `*` (everything). `a.*` matches `a.b` and `a.b.c` but not
 * `a` itself, so that `patternsMatching` can enumerate every matching pattern from the event type
 * alone and the store can find subscribers with one indexed array-overlap query.
 */

export const MAX_EVENT_TYPE_LENGTH = 200;
export const MAX_SEGMENT_LENGTH = 64;
export const MAX_EVENT_TYPES_PER_WEBHOOK = 50;

const SEGMENT_RE = /^[a-zA-Z0-9_-]+$/;
const WILDCARD_ALL = '*';
const WILDCARD_SUFFIX = '.*';

function quote(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

function validateSegments(name: string, shown: string): string | null {
  for (const segment of name.split('.')) {
    if (segment.length === 0) {
      return `event type ${shown} has an empty segment (names are dot-separated, e.g. "document.created")`;
    }
    if (segment.length > MAX_SEGMENT_LENGTH) {
      return `event type ${shown} has a segment longer than ${MAX_SEGMENT_LENGTH} characters`;
    }
    if (!SEGMENT_RE.test(segment)) {
      return `event type ${shown} has an invalid segment ${quote(segment)} (allowed: letters, digits, "_" and "-")`;
    }
  }
  return null;
}

function validateCommon(t: unknown, what: string): string | null {
  if (typeof t !== 'string') return `${what} must be a string`;
  if (t.length === 0) return `${what} must not be empty`;
  if (t.length > MAX_EVENT_TYPE_LENGTH) {
    return `${what} ${quote(t)} is longer than ${MAX_EVENT_TYPE_LENGTH} characters`;
  }
  return null;
}

/** Checks a published event type; returns what is wrong, in words, or null when valid. */
export function validateEventType(t: unknown): string | null {
  const common = validateCommon(t, 'event type');
  if (common !== null || typeof t !== 'string') return common;
  if (t.includes('*')) {
    return `event type ${quote(t)} contains "*": wildcards are only allowed in webhook subscriptions`;
  }
  return validateSegments(t, quote(t));
}

/** Checks a subscription pattern: an event type, a prefix ending in `.*`, or `*`. */
export function validateSubscriptionPattern(p: unknown): string | null {
  const common = validateCommon(p, 'event type pattern');
  if (common !== null || typeof p !== 'string') return common;
  if (p === WILDCARD_ALL) return null;
  const prefix = p.endsWith(WILDCARD_SUFFIX) ? p.slice(0, -WILDCARD_SUFFIX.length) : p;
  if (prefix.includes('*')) {
    return `event type pattern ${quote(p)} has a misplaced "*": a wildcard may only be a trailing ".*" or the whole pattern "*"`;
  }
  if (prefix.length === 0) {
    return `event type pattern ${quote(p)} has an empty prefix before ".*" (use "*" to match everything)`;
  }
  return validateSegments(prefix, quote(p));
}

/** Whether a (valid) subscription pattern matches a (valid) event type. */
export function matchesEventType(pattern: string, eventType: string): boolean {
  if (pattern === WILDCARD_ALL) return true;
  if (pattern.endsWith(WILDCARD_SUFFIX)) {
    // Keep the dot of ".*" so that "doc.*" does not match "document.created".
    const prefixWithDot = pattern.slice(0, -1);
    return eventType.length > prefixWithDot.length && eventType.startsWith(prefixWithDot);
  }
  return pattern === eventType;
}

/**
 * Every pattern that matches `eventType`, most specific first:
 * `a.b.c` → `['a.b.c', 'a.b.*', 'a.*', '*']`.
 */
export function patternsMatching(eventType: string): string[] {
  const out = [eventType];
  let end = eventType.lastIndexOf('.');
  while (end > 0) {
    out.push(`${eventType.slice(0, end)}${WILDCARD_SUFFIX}`);
    end = eventType.lastIndexOf('.', end - 1);
  }
  out.push(WILDCARD_ALL);
  return out;
}

export type NormalisedEventTypes = { ok: true; types: string[] } | { ok: false; reason: string };

/**
 * Validates a webhook's `event_types`: 1..50 subscription patterns, duplicates dropped, first
 * occurrence order kept (so what the user reads back is what they wrote).
 */
export function normaliseEventTypes(list: unknown): NormalisedEventTypes {
  if (!Array.isArray(list)) return { ok: false, reason: 'event_types must be a list of event types' };
  const items: readonly unknown[] = list;
  if (items.length === 0) {
    return { ok: false, reason: 'event_types must list at least one event type (use "*" for all events)' };
  }
  const seen = new Set<string>();
  const types: string[] = [];
  for (const [i, entry] of items.entries()) {
    const error = validateSubscriptionPattern(entry);
    if (error !== null || typeof entry !== 'string') {
      return { ok: false, reason: `event_types[${i}]: ${error ?? 'must be a string'}` };
    }
    if (!seen.has(entry)) {
      seen.add(entry);
      types.push(entry);
    }
  }
  // Counted after de-duplication: repeating an entry should not be what pushes a list over the limit.
  if (types.length > MAX_EVENT_TYPES_PER_WEBHOOK) {
    return {
      ok: false,
      reason: `event_types has ${types.length} distinct entries; at most ${MAX_EVENT_TYPES_PER_WEBHOOK} are allowed`,
    };
  }
  return { ok: true, types };
}
