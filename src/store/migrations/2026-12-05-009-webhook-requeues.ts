import { sql, type Kysely } from "kysely";

/**
 * How many times deliveries of the webhook were put back to pending (replays, retries by hand). Ingest
 * hands it to the lanes with each job: a lane that sees it grow reads the record from the start before it
 * sends on, so an event published after a replay does not go before the deliveries it put back.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table webhooks add column if not exists requeues integer not null default 0`.execute(db);
}
