import { Command, CommanderError } from "commander";
import { ConfigError, loadConfig, parseListen, type Config } from "./config.js";
import { DATABASE_WAIT_MS, StartupError, startWebhookd, type Role } from "./app.js";
import { DataDirInUseError, DataDirUnusableError, ensureDataDir } from "./store/data-dir-lock.js";
import { awaitDatabase, DatabaseUnreachableError, describeDatabase, migrate, openStore } from "./store/db.js";

/** The webhookd entry point: reads the configuration once, then runs the roles asked for until a signal. */
export async function main(argv: string[]): Promise<number> {
  // A reader of our output that goes away (`| head`, a log shipper that died) must not end the server.
  // Unhandled, the EPIPE of the "listening" line crashed it, and the crash then hung for good in the
  // logger's exit flush, holding the port and the data-dir lock, deaf to SIGTERM. The logger stops
  // writing on its own EPIPE.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code !== "EPIPE") throw err;
    });
  }
  const program = new Command()
    .name("webhookd")
    .description("Webhook delivery: signed, ordered, at-least-once")
    .exitOverride()
    .showHelpAfterError();

  const run = (roles: Role[]) => async (opts: { listen?: string }) => {
    const config = withListen(loadConfig(), opts.listen);
    const app = await startWebhookd(config, { roles });
    if (app.url) {
      console.log(`webhookd listening on ${app.url} (${config.databaseUrl ? "postgres" : `embedded database in ${config.dataDir}`}, ${app.feed.kind} feed)`);
    }
    if (app.metricsUrl) console.log(`webhookd health and metrics on ${app.metricsUrl}`);
    if (app.generatedAdminKey) {
      console.log(`admin API key (shown once, kept in ${config.dataDir}/admin-key): ${app.generatedAdminKey}`);
    }
    await new Promise<void>((resolve) => {
      const shutdown = (signal: string) => {
        app.log.info({ signal }, "shutting down: draining deliveries in flight");
        resolve();
      };
      process.once("SIGTERM", () => shutdown("SIGTERM"));
      process.once("SIGINT", () => shutdown("SIGINT"));
    });
    await app.stop();
  };

  program
    .command("serve")
    .description("every role in one process: API, dispatcher, retry sweep")
    .option("--listen <host:port>", "where the API listens (WEBHOOKD_LISTEN)")
    .action(run(["api", "dispatcher"]));
  program
    .command("api")
    .description("the API role only: Connect, gRPC, gRPC-Web, REST, health, metrics")
    .option("--listen <host:port>", "where the API listens (WEBHOOKD_LISTEN)")
    .action(run(["api"]));
  program.command("dispatcher").description("the delivery role only; run any number side by side").action(run(["dispatcher"]));
  program
    .command("migrate")
    .description("apply database migrations and exit")
    .action(async () => {
      const config = loadConfig();
      if (!config.databaseUrl) await ensureDataDir(config.dataDir);
      const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
      try {
        if (config.databaseUrl) {
          await awaitDatabase(store.db, config.databaseUrl, {
            timeoutMs: DATABASE_WAIT_MS,
            onWait: (reason) => console.error(`webhookd: Postgres at ${describeDatabase(config.databaseUrl!)} is not reachable yet (${reason}); waiting up to ${DATABASE_WAIT_MS / 1000} s`),
          });
        }
        const applied = await migrate(store.db);
        console.log(applied.length > 0 ? `applied: ${applied.join(", ")}` : "database is up to date");
      } finally {
        await store.close();
      }
    });

  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof ConfigError || err instanceof StartupError || err instanceof DataDirInUseError || err instanceof DataDirUnusableError || err instanceof DatabaseUnreachableError) {
      console.error(`webhookd: ${err.message}`);
      return 2;
    }
    console.error("webhookd:", err);
    return 1;
  }
}

function withListen(config: Config, listen: string | undefined): Config {
  if (!listen) return config;
  try {
    return { ...config, listen: parseListen(listen) };
  } catch (err) {
    throw new ConfigError(`--listen ${JSON.stringify(listen)} is invalid: ${(err as Error).message}`);
  }
}
