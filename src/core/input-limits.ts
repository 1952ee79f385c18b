/** Checks on client input that no schema expresses: what Postgres can store and how deep JSON may nest. */

/**
 * Text Postgres stores as given: no NUL (refused outright) and well-formed UTF-16 (a lone surrogate is
 * stored as U+FFFD, so a key would no longer equal itself).
 */
export function isStorableText(value: string): boolean {
  return !value.includes("\u0000") && value.isWellFormed();
}

/**
 * True when `value` has more than `max` characters (code points, as a user counts them: an emoji is one,
 * where String#length counts two).
 */
export function longerThan(value: string, max: number): boolean {
  if (value.length <= max) return false;
  let count = 0;
  for (const _ of value) if (++count > max) return true;
  return false;
}

/** Nesting limit for payloads: the same as Connect's JSON reader, so every door accepts the same events. */
export const MAX_JSON_DEPTH = 64;

/** True when the value nests deeper than `max`; iterative, so hostile depth cannot overflow the stack. */
export function exceedsDepth(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (typeof node !== "object" || node === null) continue;
    if (depth > max) return true;
    for (const child of Array.isArray(node) ? node : Object.values(node)) stack.push([child, depth + 1]);
  }
  return false;
}
