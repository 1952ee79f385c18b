import pg from "pg";
import { sql } from "kysely";

/**
 * Marks a statement to be prepared once per connection under `name`: `.modifyFront(prepared("name"))`.
 * For statements over the partitioned tables that no partition key narrows, planning is most of their
 * cost — each of the ~35 day partitions is planned, every time — and a prepared statement's generic plan
 * is made once. The text must be the same on every call (no lists of varying length).
 */
export function prepared(name: string) {
  return sql.raw(`/* prepared: ${name} */`);
}

const MARK = /\/\* prepared: ([a-z_]+) \*\//;

/** A pg client that runs the statements marked by `prepared` as named (prepared) statements. */
export class PreparingClient extends pg.Client {
  override query(...args: unknown[]): never {
    const [text, values] = args;
    const name = typeof text === "string" && Array.isArray(values) ? MARK.exec(text.slice(0, 200))?.[1] : undefined;
    const call = super.query as (...a: unknown[]) => never;
    return name ? call.call(this, { name, text, values }, ...args.slice(2)) : call.apply(this, args);
  }
}
