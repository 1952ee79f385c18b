const RFC3339_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i;

/**
 * An RFC 3339 date-time (`2026-11-29T08:00:00Z`, `…T09:00:00.5+01:00`), or undefined when the text is
 * not one. The offset is required: without it Date.parse would guess the local time zone.
 */
export function parseRfc3339(text: string): Date | undefined {
  const ms = RFC3339_RE.test(text) ? Date.parse(text) : NaN;
  return Number.isNaN(ms) ? undefined : new Date(ms);
}
