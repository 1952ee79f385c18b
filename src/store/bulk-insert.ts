import { CompiledQuery } from "kysely";
import type { Db } from "./db.js";

/**
 * The column list of a row type, checked whole: `everyColumn<Row>()(["a", "b"])` fails to compile when
 * Row has a column the list leaves out, so a column added to the type cannot be dropped on insert.
 */
export function everyColumn<T>() {
  return <const C extends readonly (keyof T & string)[]>(
    columns: C & ([Exclude<keyof T, C[number]>] extends [never] ? unknown : { missing: Exclude<keyof T, C[number]> }),
  ): C => columns;
}

/**
 * A multi-row insert of plain values, without the query builder. The ingest transaction inserts hundreds
 * of rows of a dozen columns each: building and compiling them as Kysely nodes cost the API about a tenth
 * of its CPU per event; this text costs a fraction of a microsecond per row. Dates go as ISO text (a
 * timestamptz reads it as UTC), not formatted in local time by pg.
 */
export async function insertRows<T extends object>(db: Db, table: string, columns: readonly (keyof T & string)[], rows: readonly T[]): Promise<void> {
  if (rows.length === 0) return;
  const tuples: string[] = new Array(rows.length);
  const params: unknown[] = new Array(rows.length * columns.length);
  let n = 0;
  for (let r = 0; r < rows.length; r++) {
    const row = rows[r] as Record<string, unknown>;
    const placeholders: string[] = new Array(columns.length);
    for (let c = 0; c < columns.length; c++) {
      const value = row[columns[c]!];
      params[n++] = value instanceof Date ? value.toISOString() : value;
      placeholders[c] = `$${n}`;
    }
    tuples[r] = `(${placeholders.join(", ")})`;
  }
  const text = `insert into "${table}" (${columns.map((c) => `"${c}"`).join(", ")}) values ${tuples.join(", ")}`;
  await db.executeQuery(CompiledQuery.raw(text, params));
}
