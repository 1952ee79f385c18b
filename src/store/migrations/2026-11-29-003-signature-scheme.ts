import type { Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable("webhooks")
    .addColumn("signature_scheme", "text", (c) => c.notNull().defaultTo("v1"))
    .addColumn("public_key", "text")
    .execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("webhooks").dropColumn("public_key").dropColumn("signature_scheme").execute();
}
