import pg from "pg";
import { sql } from "kysely";

/**
 * Marks a statement to be prepared once per connection under `name`: `.modifyFront(prepared("name"))`.
 * Postgres then parses and analyses it once, not on every call, and after five runs may settle on one
 * generic plan: where no partition key narrows a statement, planned afresh it plans each of the ~35 day
 * partitions every time. The text must be the same on every call (no lists of varying length), a value
 * a partial index depends on must be a literal for a generic plan to use that index, and a list of
 * partition keys (`id = any($n)`) must not go to the partitioned table: a generic plan does not prune
 * by it and reads every partition (Postgres 15); aim it at the partition (`onDayPartition`).
 */
export function prepared(name: string) {
  return sql.raw(`/* prepared: ${name} */`);
}

const MARK = /\/\* prepared: ([a-z0-9_]+) \*\//;

/** A pg client that runs the statements marked by `prepared` as named (prepared) statements. */
export class PreparingClient extends pg.Client {
  override query(...args: unknown[]): never {
    const [text, values] = args;
    const name = typeof text === "string" && Array.isArray(values) ? MARK.exec(text.slice(0, 200))?.[1] : undefined;
    const call = super.query as (...a: unknown[]) => never;
    return name ? call.call(this, { name, text, values }, ...args.slice(2)) : call.apply(this, args);
  }
}
