import { CompiledQuery } from "kysely";
import type { Db } from "./db.js";

const texts = new Map<string, string>();

/**
 * A multi-row insert of plain values, without the query builder. The ingest transaction inserts hundreds
 * of rows of a dozen columns each: building and compiling them as Kysely nodes cost the API about a tenth
 * of its CPU per event. Dates go as ISO text (a timestamptz reads it as UTC), converted once per value
 * rather than formatted in local time by pg.
 */
export async function insertRows<T extends object>(db: Db, table: string, columns: readonly (keyof T & string)[], rows: readonly T[]): Promise<void> {
  if (rows.length === 0) return;
  const key = `${table}|${columns.join(",")}|${rows.length}`;
  let text = texts.get(key);
  if (text === undefined) {
    const tuples: string[] = [];
    for (let r = 0, n = 1; r < rows.length; r++) tuples.push(`(${columns.map(() => `$${n++}`).join(", ")})`);
    text = `insert into "${table}" (${columns.map((c) => `"${c}"`).join(", ")}) values ${tuples.join(", ")}`;
    // One text per batch size; batches are at most a few hundred rows, so this stays small.
    if (texts.size > 2_000) texts.clear();
    texts.set(key, text);
  }
  const params: unknown[] = new Array(rows.length * columns.length);
  let i = 0;
  for (const row of rows) {
    for (const column of columns) {
      const value = (row as Record<string, unknown>)[column];
      params[i++] = value instanceof Date ? value.toISOString() : value;
    }
  }
  await db.executeQuery(CompiledQuery.raw(text, params));
}
