import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  // Delays in ms; null: the server's schedule.
  await db.schema.alterTable("webhooks").addColumn("retry_schedule", sql`integer[]`).execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("webhooks").dropColumn("retry_schedule").execute();
}
