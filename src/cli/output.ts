import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";

/** Anything with a `write(string)`: process.stdout, a PassThrough, a test double. */
export interface TextSink {
  write(chunk: string): unknown;
}

/** A timestamp as RFC 3339 in UTC, to the second; `-` when unset. */
export function formatTime(ts: Timestamp | undefined): string {
  if (!ts) return "-";
  const date = timestampDate(ts);
  if (Number.isNaN(date.getTime())) return "-";
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** An empty string, zero or missing value shown as `-` in human output. */
export function orDash(value: string | number | bigint | undefined | null): string {
  if (value === undefined || value === null || value === "" || value === 0 || value === 0n) return "-";
  return String(value);
}

/**
 * A compact, aligned table: two spaces between columns, the last column unpadded.
 * With no rows, prints `empty` instead (e.g. "No webhooks.").
 */
export function printTable(out: TextSink, headers: string[], rows: string[][], empty: string): void {
  if (rows.length === 0) {
    out.write(`${empty}\n`);
    return;
  }
  const clean = rows.map((row) => row.map((cell) => cell.replace(/\s+/g, " ")));
  const widths = headers.map((h, i) => Math.max(h.length, ...clean.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  out.write(`${line(headers)}\n`);
  for (const row of clean) out.write(`${line(row)}\n`);
}

/** `key: value` lines with the values aligned. */
export function printFields(out: TextSink, fields: Array<[string, string]>): void {
  const width = Math.max(0, ...fields.map(([k]) => k.length + 1));
  for (const [key, value] of fields) {
    out.write(`${`${key}:`.padEnd(width)} ${value}\n`);
  }
}

/** One JSON document, pretty-printed, newline-terminated. */
export function printJson(out: TextSink, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}
