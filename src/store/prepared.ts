import pg from "pg";
import { sql } from "kysely";

/**
 * Marks a statement to be prepared once per connection under `name`: `.modifyFront(prepared("name"))`.
 * Postgres then parses and analyses it once, not on every call. Where no partition key narrows the
 * statement, it also settles on one generic plan after five runs, where planned afresh each of the ~35
 * day partitions is planned every time. The text must be the same on every call (no lists of varying
 * length), and a value a partial index depends on must be a literal for the generic plan to use it.
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
