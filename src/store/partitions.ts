import { sql, type RawBuilder } from "kysely";
import { idFloor, idTimestamp, type IdKind } from "../core/ids.js";
import { isUndefinedTable, type Db } from "./db.js";
import { prepared } from "./prepared.js";

/**
 * Retention by daily partitions. Ids lead with their creation time, so each table is range-partitioned
 * on an id column: a lookup by id touches one partition, the primary key needs no extra column, and a
 * day of history goes with one DROP TABLE instead of a bulk DELETE. Attempts are partitioned by their
 * delivery's id, so a delivery and its attempts leave together.
 */
export const PARTITIONED_TABLES: readonly { table: "events" | "deliveries" | "delivery_attempts"; kind: IdKind }[] = [
  { table: "events", kind: "evt" },
  { table: "deliveries", kind: "dlv" },
  { table: "delivery_attempts", kind: "dlv" },
];

export const DAY_MS = 24 * 60 * 60 * 1000;
/** Days of partitions made ahead of time, so that inserts never wait on DDL. */
export const DAYS_AHEAD = 3;
/**
 * Records are kept at least the TTL; a partition goes a day after its last row's TTL ends, which leaves
 * every expired delivery at least a day in which it can still be retried by hand.
 */
export const RETENTION_GRACE_MS = DAY_MS;

export function dayStart(ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS;
}

function dayName(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10).replaceAll("-", "");
}

const PARTITION_NAME_RE = /_p(\d{4})(\d{2})(\d{2})$/;

/**
 * Runs a statement keyed by `ids` against the day partition that holds them all, prepared under `name`
 * and the day; against the partitioned table, unprepared, when the ids span days or their day has no
 * partition (its rows are in the default one: the statement fails as "relation does not exist" first).
 * A prepared statement's generic plan cannot prune an `id = any($n)` list (Postgres 15) and reads every
 * partition, so such a statement may be prepared only aimed at one. `run` gets the table to name and the
 * mark to put first. Not inside a transaction: the failed statement would abort it.
 */
export async function onDayPartition<T>(
  table: (typeof PARTITIONED_TABLES)[number]["table"],
  ids: readonly string[],
  name: string,
  run: (target: string, mark: RawBuilder<unknown>) => Promise<T>,
): Promise<T> {
  const day = sharedDay(ids);
  if (day !== undefined) {
    try {
      return await run(`${table}_p${dayName(day)}`, prepared(`${name}_${dayName(day)}`));
    } catch (err) {
      if (!isUndefinedTable(err)) throw err;
    }
  }
  return run(table, sql``);
}

/** The day (start, UTC ms) of every id, when they share one. */
function sharedDay(ids: readonly string[]): number | undefined {
  let day: number | undefined;
  for (const id of ids) {
    const at = idTimestamp(id)?.getTime();
    if (at === undefined) return undefined;
    const start = dayStart(at);
    if (day !== undefined && start !== day) return undefined;
    day = start;
  }
  return day;
}

/** The day (start, UTC ms) a partition holds, from its name, or undefined for the default partition. */
export function partitionDay(name: string): number | undefined {
  const match = PARTITION_NAME_RE.exec(name);
  return match ? Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])) : undefined;
}

/** When the partition holding a row created at `createdAt` is dropped. */
export function retentionEnd(createdAt: number, ttlMs: number): number {
  return dayStart(createdAt) + DAY_MS + ttlMs + RETENTION_GRACE_MS;
}

/** `retentionEnd` in SQL, for a timestamptz column (or expression) of created times. */
export function retentionEndSql(createdAt: RawBuilder<Date>, ttlMs: number): RawBuilder<Date> {
  return sql<Date>`(date_trunc('day', ${createdAt}, 'UTC') + ${DAY_MS + ttlMs + RETENTION_GRACE_MS}::float8 * interval '1 millisecond')`;
}

/**
 * A delivery put back in its lane (a retry by hand, a replay) keeps at least this long before its
 * partition goes: closer to it, it is not put back. Its fresh TTL ends this long before the partition.
 */
export const REQUEUE_MARGIN_MS = 60 * 60 * 1000;

/**
 * The TTL end of a delivery created at `createdAt` put back to be sent at `dueAt` (now, unless paced): a
 * fresh TTL from then, never past its partition's retention.
 */
export function requeuedExpiry(createdAt: RawBuilder<Date>, ttlMs: number, dueAt: RawBuilder<Date> = sql<Date>`now()`): RawBuilder<Date> {
  return sql<Date>`least(${dueAt} + ${ttlMs}::float8 * interval '1 millisecond', ${requeueDeadlineSql(createdAt, ttlMs)})`;
}

/** The latest a delivery created at `createdAt` may be sent when put back: REQUEUE_MARGIN_MS before its partition goes. */
export function requeueDeadlineSql(createdAt: RawBuilder<Date>, ttlMs: number): RawBuilder<Date> {
  return sql<Date>`(${retentionEndSql(createdAt, ttlMs)} - ${REQUEUE_MARGIN_MS}::float8 * interval '1 millisecond')`;
}

/** True when a delivery created at `createdAt` may still be put back (see REQUEUE_MARGIN_MS). */
export function requeueableSql(createdAt: RawBuilder<Date>, ttlMs: number): RawBuilder<boolean> {
  return sql<boolean>`${retentionEndSql(createdAt, ttlMs)} > now() + ${REQUEUE_MARGIN_MS}::float8 * interval '1 millisecond'`;
}

/** The day partition of `table` for the day starting at `day`, created unless it exists. */
async function createDayPartition(db: Db, table: string, kind: IdKind, day: number): Promise<void> {
  const name = `${table}_p${dayName(day)}`;
  await sql`create table if not exists ${sql.table(name)} partition of ${sql.table(table)}
    for values from (${sql.lit(idFloor(kind, day))}) to (${sql.lit(idFloor(kind, day + DAY_MS))})`.execute(db);
}

export async function listPartitions(db: Db, table: string): Promise<string[]> {
  const result = await sql<{ name: string }>`
    select c.relname as name from pg_inherits i
    join pg_class c on c.oid = i.inhrelid
    join pg_class p on p.oid = i.inhparent
    where p.relname = ${table} and p.relnamespace = to_regnamespace(current_schema())::oid
    order by c.relname`.execute(db);
  return result.rows.map((r) => r.name);
}

/**
 * Makes sure every partitioned table has a partition for each day from `fromDay` through `DAYS_AHEAD`
 * days after `now`. Returns the days it could not create: a day whose rows already went to the
 * default partition (nothing made its partition in time) stays there, which loses nothing.
 */
export async function ensurePartitions(db: Db, now: number, fromDay = dayStart(now)): Promise<string[]> {
  const failed: string[] = [];
  for (const { table, kind } of PARTITIONED_TABLES) {
    const existing = new Set(await listPartitions(db, table));
    for (let day = fromDay; day <= dayStart(now) + DAYS_AHEAD * DAY_MS; day += DAY_MS) {
      if (existing.has(`${table}_p${dayName(day)}`)) continue;
      try {
        await withLockTimeout(db, (trx) => createDayPartition(trx, table, kind, day));
      } catch (err) {
        failed.push(`${table}_p${dayName(day)}: ${(err as Error).message}`);
      }
    }
  }
  return failed;
}

/** Drops the day partitions whose retention has ended by `now`; returns their names. */
export async function dropExpiredPartitions(db: Db, now: number, ttlMs: number): Promise<string[]> {
  const dropped: string[] = [];
  for (const { table } of PARTITIONED_TABLES) {
    for (const name of await listPartitions(db, table)) {
      const day = partitionDay(name);
      if (day === undefined || retentionEnd(day, ttlMs) > now) continue;
      await withLockTimeout(db, (trx) => sql`drop table if exists ${sql.table(name)}`.execute(trx));
      dropped.push(name);
    }
  }
  return dropped;
}

/**
 * DDL on a partitioned table locks the parent; a short lock timeout makes housekeeping give up and try
 * again later rather than queue behind a long query and stall every insert queued behind it.
 */
async function withLockTimeout<T>(db: Db, work: (trx: Db) => Promise<T>): Promise<T> {
  // Inside a migration the caller's transaction is the one to use (Kysely does not nest them).
  if (db.isTransaction) return work(db);
  return db.transaction().execute(async (trx) => {
    await sql`set local lock_timeout = '5s'`.execute(trx);
    return work(trx);
  });
}
