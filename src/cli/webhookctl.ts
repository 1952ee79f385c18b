/**
 * webhookctl: the operator CLI. Every command is one (or, with --all, a few) Connect RPCs to a webhookd API
 * role; see CONTRACT.md, section "webhookctl".
 *
 * Connection options (--url, --api-key, --tenant) belong to the program and go before the command, because
 * `webhooks create --url` and `keys create --tenant` mean something else:
 *   webhookctl --url http://host:8080 --tenant t_1 webhooks list
 * Where a command has no flag of that name they are accepted after it too. WEBHOOKD_URL and
 * WEBHOOKD_API_KEY provide them from the environment.
 */
import { readFileSync } from "node:fs";
import type { DescMessage, JsonObject, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { create, toJson } from "@bufbuild/protobuf";
import type { Client, Interceptor } from "@connectrpc/connect";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import type { ApiKey, AuditEntry, Tenant } from "../../gen/webhook/v1/admin_pb.js";
import {
  AdminService,
  CreateApiKeyResponseSchema,
  CreateTenantResponseSchema,
  ListAuditLogResponseSchema,
  ListTenantsResponseSchema,
  RevokeApiKeyResponseSchema,
} from "../../gen/webhook/v1/admin_pb.js";
import type { Delivery, DeliveryAttempt } from "../../gen/webhook/v1/delivery_pb.js";
import {
  DeliveryService,
  GetDeliveryResponseSchema,
  ListDeliveriesResponseSchema,
  ListDeliveryAttemptsResponseSchema,
  RetryDeliveryResponseSchema,
} from "../../gen/webhook/v1/delivery_pb.js";
import type { Event } from "../../gen/webhook/v1/event_pb.js";
import {
  EventService,
  GetEventResponseSchema,
  ListEventsResponseSchema,
  PublishEventResponseSchema,
} from "../../gen/webhook/v1/event_pb.js";
import type { Webhook } from "../../gen/webhook/v1/webhook_pb.js";
import {
  CreateWebhookResponseSchema,
  DeleteWebhookResponseSchema,
  GetWebhookResponseSchema,
  ListWebhooksResponseSchema,
  RotateWebhookSecretResponseSchema,
  UpdateWebhookRequestSchema,
  UpdateWebhookResponseSchema,
  WebhookService,
} from "../../gen/webhook/v1/webhook_pb.js";
import type { Replay } from "../../gen/webhook/v1/webhook_pb.js";
import { GetReplayResponseSchema, ReplayWebhookResponseSchema } from "../../gen/webhook/v1/webhook_pb.js";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { parsePointInTime, renderReplayProgress } from "./progress.js";
import type { TextSink } from "./output.js";
import { formatTime, orDash, printFields, printJson, printTable } from "./output.js";

export interface CliIO {
  stdout: TextSink;
  /** A terminal (isTTY) gets a progress bar redrawn in place; anything else gets plain lines. */
  stderr: TextSink & { isTTY?: boolean };
  env: Record<string, string | undefined>;
}

const DEFAULT_URL = "http://127.0.0.1:8080";
const REQUEST_TIMEOUT_MS = 30_000;

/** A mistake in how the CLI was called (bad flag value, missing API key): exit code 2. */
class UsageError extends Error {}

/** Network-level failures that mean "the server is not there", as opposed to an answer from it. */
const UNREACHABLE_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "EPIPE",
]);

interface GlobalOptions {
  url?: string;
  apiKey?: string;
  tenant?: string;
  json?: boolean;
}

/** Lazily built connection: the API key and URL are checked only when a command needs the server. */
class Connection {
  baseUrl: string;
  /** Connection options given after the command (where they do not clash with its own flags). */
  overrides: GlobalOptions = {};
  #clients?: {
    webhooks: Client<typeof WebhookService>;
    events: Client<typeof EventService>;
    deliveries: Client<typeof DeliveryService>;
    admin: Client<typeof AdminService>;
  };

  constructor(
    private readonly program: Command,
    private readonly io: CliIO,
  ) {
    this.baseUrl = DEFAULT_URL;
  }

  clients() {
    if (this.#clients) return this.#clients;
    const global = this.program.opts<GlobalOptions>();
    const opts: GlobalOptions = {
      url: this.overrides.url ?? global.url,
      apiKey: this.overrides.apiKey ?? global.apiKey,
      tenant: this.overrides.tenant ?? global.tenant,
    };
    const env = this.io.env;
    const url = nonEmpty(opts.url) ?? nonEmpty(env.WEBHOOKD_URL) ?? DEFAULT_URL;
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new UsageError(`invalid server URL ${JSON.stringify(url)} (--url or WEBHOOKD_URL), e.g. ${DEFAULT_URL}`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new UsageError(`server URL must be http:// or https://, got ${JSON.stringify(url)}`);
    }
    this.baseUrl = url.replace(/\/+$/, "");
    const apiKey = nonEmpty(opts.apiKey) ?? nonEmpty(env.WEBHOOKD_API_KEY);
    if (!apiKey) throw new UsageError("WEBHOOKD_API_KEY is not set (or pass --api-key)");
    const tenant = nonEmpty(opts.tenant);

    const auth: Interceptor = (next) => async (req) => {
      req.header.set("authorization", `Bearer ${apiKey}`);
      if (tenant) req.header.set("x-tenant-id", tenant);
      return next(req);
    };
    const transport = createConnectTransport({
      baseUrl: this.baseUrl,
      httpVersion: "1.1",
      interceptors: [auth],
      defaultTimeoutMs: REQUEST_TIMEOUT_MS,
    });
    this.#clients = {
      webhooks: createClient(WebhookService, transport),
      events: createClient(EventService, transport),
      deliveries: createClient(DeliveryService, transport),
      admin: createClient(AdminService, transport),
    };
    return this.#clients;
  }
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed ? trimmed : undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Argument parsers (commander turns an InvalidArgumentError into a usage error)

function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError("expected a positive whole number.");
  }
  return n;
}

function nonNegativeNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError("expected a number >= 0.");
  }
  return n;
}

function positiveNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n <= 0) {
    throw new InvalidArgumentError("expected a number > 0.");
  }
  return n;
}

function eventTypeList(value: string): string[] {
  const list = value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (list.length === 0) throw new InvalidArgumentError("expected a comma-separated list of event types.");
  return list;
}

/** `--data` as inline JSON, `@path` for a file or `@-` for stdin; must be a JSON object. */
function readPayload(spec: string): JsonObject {
  let text = spec;
  let where = "--data";
  if (spec.startsWith("@")) {
    const path = spec.slice(1);
    where = `--data ${spec}`;
    try {
      text = readFileSync(path === "-" ? 0 : path, "utf8");
    } catch (err) {
      throw new UsageError(`--data: cannot read ${path === "-" ? "stdin" : path}: ${errorMessage(err)}`);
    }
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${where} is not valid JSON: ${errorMessage(err)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    const kind = value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
    throw new UsageError(`${where} must be a JSON object (the event payload), got ${kind}`);
  }
  return value as JsonObject;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------------------------
// Human-readable rendering

function circuitSummary(w: Webhook): string {
  const h = w.health;
  if (!h || !h.circuitState) return "closed";
  const failures = h.consecutiveFailures ? ` (${h.consecutiveFailures} failures in a row)` : "";
  if (h.circuitState === "open") return `open until ${formatTime(h.circuitOpenUntil)}${failures}`;
  return `${h.circuitState}${failures}`;
}

function webhookFields(w: Webhook | undefined): Array<[string, string]> {
  if (!w) return [];
  return [
    ["webhook_id", w.webhookId],
    ["url", w.url],
    ["event_types", w.eventTypes.join(",")],
    ["status", w.status],
    ["description", orDash(w.description)],
    ["ordered_by_key", String(w.orderedByKey)],
    ["rate_limit_per_second", w.rateLimitPerSecond ? String(w.rateLimitPerSecond) : "none"],
    ["signature_scheme", w.signatureScheme || "v1"],
    ["retry_schedule", w.retrySchedule || "server default"],
    ...(w.publicKey ? ([["public_key", w.publicKey]] as [string, string][]) : []),
    ["circuit", circuitSummary(w)],
    ["failing_since", formatTime(w.health?.failingSince)],
    ...(w.health?.throttleMs ? ([["throttled_to", `one attempt per ${w.health.throttleMs} ms (after 429s)`]] as [string, string][]) : []),
    ["created_at", formatTime(w.createdAt)],
    ["updated_at", formatTime(w.updatedAt)],
  ];
}

function eventFields(e: Event | undefined): Array<[string, string]> {
  if (!e) return [];
  return [
    ["event_id", e.eventId],
    ["event_type", e.eventType],
    ["idempotency_key", orDash(e.idempotencyKey)],
    ["ordering_key", orDash(e.orderingKey)],
    ["delivery_count", String(e.deliveryCount)],
    ["created_at", formatTime(e.createdAt)],
    // Left out where the answer leaves it out (a publish): `{}` would claim the event had an empty one.
    ...(e.payload ? ([["payload", JSON.stringify(e.payload)]] as [string, string][]) : []),
  ];
}

function deliveryFields(d: Delivery | undefined): Array<[string, string]> {
  if (!d) return [];
  return [
    ["delivery_id", d.deliveryId],
    ["event_id", d.eventId],
    ["event_type", orDash(d.eventType)],
    ["webhook_id", d.webhookId],
    ["status", d.status],
    ["attempts", String(d.attempts)],
    ["next_attempt_at", formatTime(d.nextAttemptAt)],
    ["last_response_code", orDash(d.lastResponseCode)],
    ["last_error", orDash(d.lastError)],
    ["seq", String(d.seq)],
    ["created_at", formatTime(d.createdAt)],
    ["delivered_at", formatTime(d.deliveredAt)],
  ];
}

function apiKeyFields(k: ApiKey | undefined): Array<[string, string]> {
  if (!k) return [];
  return [
    ["key_id", k.keyId],
    ["tenant_id", k.tenantId],
    ["admin", String(k.admin)],
    ["created_at", formatTime(k.createdAt)],
    ["revoked_at", formatTime(k.revokedAt)],
  ];
}

function replayFields(r: Replay | undefined): Array<[string, string]> {
  if (!r) return [];
  return [
    ["replay_id", r.replayId],
    ["webhook_id", r.webhookId],
    ["scope", r.scope],
    ["since", formatTime(r.since)],
    ["until", formatTime(r.until)],
    ["rate_per_second", String(r.ratePerSecond)],
    ["total", String(r.total)],
    ["pending", String(r.pending)],
    ["succeeded", String(r.succeeded)],
    ["failed", String(r.failed)],
    ["created_at", formatTime(r.createdAt)],
  ];
}

function tenantFields(t: Tenant | undefined): Array<[string, string]> {
  if (!t) return [];
  return [
    ["tenant_id", t.tenantId],
    ["name", t.name],
    ["created_at", formatTime(t.createdAt)],
  ];
}

const webhookRow = (w: Webhook) => [w.webhookId, w.status, w.url, w.eventTypes.join(","), formatTime(w.createdAt)];
const eventRow = (e: Event) => [
  e.eventId,
  e.eventType,
  String(e.deliveryCount),
  orDash(e.orderingKey),
  formatTime(e.createdAt),
];
const deliveryRow = (d: Delivery) => [
  d.deliveryId,
  d.status,
  d.eventId,
  orDash(d.eventType),
  String(d.attempts),
  orDash(d.lastResponseCode),
  formatTime(d.nextAttemptAt),
  formatTime(d.createdAt),
];
const attemptRow = (a: DeliveryAttempt) => [
  formatTime(a.attemptedAt),
  `${a.durationMs}ms`,
  orDash(a.responseCode),
  orDash(a.error),
];
const tenantRow = (t: Tenant) => [t.tenantId, t.name, formatTime(t.createdAt)];
const auditRow = (a: AuditEntry) => [
  formatTime(a.createdAt),
  a.action,
  orDash(a.resourceId),
  a.actor,
  orDash(a.details),
];

// ---------------------------------------------------------------------------------------------------------
// The program

interface ListOptions {
  pageSize?: number;
  pageToken?: string;
  all?: boolean;
}

/**
 * Fetches one page, or with `all` every page from `pageToken` on, merging each page into the first;
 * the merged answer has an empty next_page_token.
 */
async function paginate<R extends { nextPageToken: string }>(
  opts: ListOptions,
  fetch: (pageToken: string) => Promise<R>,
  merge: (into: R, page: R) => void,
): Promise<R> {
  const first = await fetch(opts.pageToken ?? "");
  if (!opts.all) return first;
  const seen = new Set<string>();
  let token = first.nextPageToken;
  while (token && !seen.has(token)) {
    seen.add(token);
    const page = await fetch(token);
    merge(first, page);
    token = page.nextPageToken;
  }
  first.nextPageToken = "";
  return first;
}

function buildProgram(io: CliIO): { program: Command; conn: Connection } {
  const program = new Command("webhookctl");
  const conn = new Connection(program, io);

  program
    .description("Operate a webhookd server over its Connect API.")
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({
      writeOut: (s) => void io.stdout.write(s),
      writeErr: (s) => void io.stderr.write(s),
      outputError: (s, write) => write(s),
    })
    .showHelpAfterError("(add --help for usage)")
    .option("--url <url>", `server URL (env WEBHOOKD_URL, default ${DEFAULT_URL})`)
    .option("--api-key <key>", "API key (env WEBHOOKD_API_KEY)")
    .option("--tenant <id>", "act on this tenant (admin keys only; sends x-tenant-id)")
    .option("--json", "machine-readable JSON output for any command")
    .addHelpText(
      "after",
      `
Connection options go before the command (after it too, unless the command has
its own flag of that name, like webhooks create --url):
  webhookctl --url http://127.0.0.1:8080 --tenant ten_01j… webhooks list

Examples:
  webhookctl webhooks create --url https://example.com/hook --events 'document.*'
  webhookctl events publish --type document.created --data '{"id": 1}'
  webhookctl deliveries list --webhook wh_123 --status failed --json`,
    );

  const out = io.stdout;
  /**
   * Adds --json and wraps the action: `json` is true when --json was given here or before the command.
   * The connection options are also accepted after the command (hidden from its help) unless the command
   * has a flag of that name with its own meaning (webhooks create --url, keys create --tenant, …).
   */
  const leaf = <A extends unknown[]>(cmd: Command, fn: (json: boolean, ...args: A) => Promise<void>): Command => {
    const own = new Set(cmd.options.map((o) => o.long));
    const shared: Array<[flag: string, key: keyof GlobalOptions]> = [];
    for (const [flag, key, arg] of [
      ["--url", "url", "<url>"],
      ["--api-key", "apiKey", "<key>"],
      ["--tenant", "tenant", "<id>"],
    ] as const) {
      if (own.has(flag)) continue;
      cmd.addOption(new Option(`${flag} ${arg}`).hideHelp());
      shared.push([flag, key]);
    }
    return cmd.option("--json", "print the response as JSON").action(async (...args: unknown[]) => {
      const self = args[args.length - 1] as Command;
      const opts = self.opts();
      for (const [, key] of shared) {
        if (typeof opts[key] === "string") conn.overrides[key] = opts[key] as never;
      }
      const json = Boolean(opts.json || program.opts<GlobalOptions>().json);
      await fn(json, ...(args.slice(0, -1) as A));
    });
  };
  const emit = <Desc extends DescMessage>(schema: Desc, res: MessageShape<Desc>) =>
    printJson(out, toJson(schema, res));
  const moreHint = (token: string) => {
    if (token) io.stderr.write(`(more results: --page-token ${token}, or --all)\n`);
  };
  const listOptions = (cmd: Command) =>
    cmd
      .option("--page-size <n>", "results per page (server default 50, at most 100)", positiveInt)
      .option("--page-token <token>", "continue from a next_page_token")
      .option("--all", "follow next_page_token and print every page");

  // --- webhooks ------------------------------------------------------------------------------------------
  const webhooks = program.command("webhooks").description("manage webhook subscriptions");

  leaf(
    webhooks
      .command("create")
      .description("register a webhook; prints its signing secret once")
      .requiredOption("--url <url>", "the URL that receives deliveries")
      .requiredOption("--events <list>", "comma-separated event types, e.g. document.created,invoice.* or *", eventTypeList)
      .option("--description <text>", "a note for operators")
      .option("--ordered-by-key", "keep FIFO per ordering key instead of per webhook")
      .option("--rate-limit <n>", "cap on deliveries per second (0: none)", nonNegativeNumber)
      .addOption(
        new Option("--signature-scheme <scheme>", "v1: HMAC with a shared secret; v1a: ed25519, receivers verify with the public key")
          .choices(["v1", "v1a"])
          .default("v1"),
      )
      .option("--retry-schedule <delays>", 'retry delays for this webhook, e.g. "10s,1m,10m", or "none"'),
    async (
      json,
      opts: {
        url: string;
        events: string[];
        description?: string;
        orderedByKey?: boolean;
        rateLimit?: number;
        signatureScheme: string;
        retrySchedule?: string;
      },
    ) => {
      const res = await conn.clients().webhooks.createWebhook({
        url: opts.url,
        eventTypes: opts.events,
        description: opts.description ?? "",
        orderedByKey: opts.orderedByKey ?? false,
        rateLimitPerSecond: opts.rateLimit ?? 0,
        signatureScheme: opts.signatureScheme,
        retrySchedule: opts.retrySchedule ?? "",
      });
      if (json) return emit(CreateWebhookResponseSchema, res);
      if (!res.secret) return printFields(out, webhookFields(res.webhook));
      printFields(out, [...webhookFields(res.webhook), ["secret", res.secret]]);
      out.write("The signing secret is shown only once; store it now (rotate-secret issues a new one).\n");
    },
  );

  leaf(
    listOptions(webhooks.command("list").description("list webhooks")),
    async (json, opts: ListOptions) => {
      const res = await paginate(
        opts,
        (pageToken) => conn.clients().webhooks.listWebhooks({ pageSize: opts.pageSize ?? 0, pageToken }),
        (into, page) => into.webhooks.push(...page.webhooks),
      );
      if (json) return emit(ListWebhooksResponseSchema, res);
      printTable(out, ["ID", "STATUS", "URL", "EVENT TYPES", "CREATED"], res.webhooks.map(webhookRow), "No webhooks.");
      moreHint(res.nextPageToken);
    },
  );

  leaf(
    webhooks.command("get").description("show one webhook").argument("<id>", "webhook id (wh_…)"),
    async (json, id: string) => {
      const res = await conn.clients().webhooks.getWebhook({ webhookId: id });
      if (json) return emit(GetWebhookResponseSchema, res);
      printFields(out, webhookFields(res.webhook));
    },
  );

  leaf(
    webhooks
      .command("update")
      .description("change a webhook; only the given fields change")
      .argument("<id>", "webhook id (wh_…)")
      .option("--url <url>", "new delivery URL")
      .option("--events <list>", "replace the event types (comma-separated)", eventTypeList)
      .addOption(new Option("--status <status>", "pause or resume deliveries").choices(["active", "paused"]))
      .option("--description <text>", "new description")
      .option("--ordered-by-key", "keep FIFO per ordering key")
      .option("--no-ordered-by-key", "keep FIFO per webhook")
      .option("--rate-limit <n>", "cap on deliveries per second (0: none)", nonNegativeNumber)
      .option("--retry-schedule <delays>", 'retry delays, e.g. "10s,1m"; "none"; "" for the server default'),
    async (
      json,
      id: string,
      opts: {
        url?: string;
        events?: string[];
        status?: string;
        description?: string;
        orderedByKey?: boolean;
        rateLimit?: number;
        retrySchedule?: string;
      },
    ) => {
      const req: MessageInitShape<typeof UpdateWebhookRequestSchema> = { webhookId: id };
      if (opts.url !== undefined) req.url = opts.url;
      if (opts.events !== undefined) req.eventTypes = opts.events;
      if (opts.status !== undefined) req.status = opts.status;
      if (opts.description !== undefined) req.description = opts.description;
      if (opts.orderedByKey !== undefined) req.orderedByKey = opts.orderedByKey;
      if (opts.rateLimit !== undefined) req.rateLimitPerSecond = opts.rateLimit;
      if (opts.retrySchedule !== undefined) req.retrySchedule = opts.retrySchedule;
      if (Object.keys(req).length === 1) {
        throw new UsageError(
          "nothing to update: pass --url, --events, --status, --description, --[no-]ordered-by-key, --rate-limit or --retry-schedule",
        );
      }
      const res = await conn.clients().webhooks.updateWebhook(req);
      if (json) return emit(UpdateWebhookResponseSchema, res);
      printFields(out, webhookFields(res.webhook));
    },
  );

  leaf(
    webhooks.command("delete").description("delete a webhook").argument("<id>", "webhook id (wh_…)"),
    async (json, id: string) => {
      const res = await conn.clients().webhooks.deleteWebhook({ webhookId: id });
      if (json) return emit(DeleteWebhookResponseSchema, res);
      out.write(`Deleted webhook ${id}.\n`);
    },
  );

  leaf(
    webhooks
      .command("rotate-secret")
      .description("issue a new signing secret; prints it once")
      .argument("<id>", "webhook id (wh_…)"),
    async (json, id: string) => {
      const res = await conn.clients().webhooks.rotateWebhookSecret({ webhookId: id });
      if (json) return emit(RotateWebhookSecretResponseSchema, res);
      if (res.publicKey) {
        printFields(out, [
          ["webhook_id", id],
          ["public_key", res.publicKey],
        ]);
        out.write("Deliveries are signed with the new key and, during the grace period, the previous one.\n");
        return;
      }
      printFields(out, [
        ["webhook_id", id],
        ["secret", res.secret],
      ]);
      out.write("The new signing secret is shown only once; store it now.\n");
    },
  );

  /** Polls the replay until nothing of it is pending, drawing its progress on stderr. */
  const followReplay = async (replay: Replay): Promise<Replay> => {
    const started = Date.now();
    const tty = io.stderr.isTTY === true;
    let current = replay;
    let lastLine = 0;
    for (;;) {
      const line = renderReplayProgress(current, Date.now() - started);
      if (tty) io.stderr.write(`\r${line}\x1b[K`);
      else if (current.pending === 0 || Date.now() - lastLine >= 2_000) {
        io.stderr.write(`${line}\n`);
        lastLine = Date.now();
      }
      if (current.pending === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 500));
      current = (await conn.clients().webhooks.getReplay({ webhookId: replay.webhookId, replayId: replay.replayId })).replay!;
    }
    if (tty) io.stderr.write("\n");
    return current;
  };

  leaf(
    webhooks
      .command("replay")
      .description("send a webhook's failed deliveries (or all) of a time range again, in order, paced; shows progress")
      .argument("<id>", "webhook id (wh_…)")
      .requiredOption("--since <time>", "from this time: RFC 3339 (2026-11-29T08:00:00Z) or a duration ago (2h, 3d)")
      .option("--until <time>", "up to this time (default: now)")
      .addOption(new Option("--scope <scope>", "failed: failed and expired deliveries; all: every final delivery").choices(["failed", "all"]).default("failed"))
      .option("--rate <n>", "deliveries per second (default: the server's WEBHOOKD_REPLAY_RATE)", positiveNumber)
      .option("--detach", "start the replay and return without following its progress"),
    async (json, id: string, opts: { since: string; until?: string; scope: string; rate?: number; detach?: boolean }) => {
      const now = Date.now();
      let since: Date;
      let until: Date | undefined;
      try {
        since = parsePointInTime(opts.since, now);
        until = opts.until === undefined ? undefined : parsePointInTime(opts.until, now);
      } catch (err) {
        throw new UsageError(`--since/--until: ${errorMessage(err)}`);
      }
      const res = await conn.clients().webhooks.replayWebhook({
        webhookId: id,
        since: timestampFromDate(since),
        until: until && timestampFromDate(until),
        scope: opts.scope,
        ratePerSecond: opts.rate ?? 0,
      });
      let replay = res.replay!;
      if (!json) io.stderr.write(`Replay ${replay.replayId}: ${replay.total} deliveries put back in order at ${replay.ratePerSecond}/s.\n`);
      if (!opts.detach && replay.total > 0) replay = await followReplay(replay);
      if (json) return emit(ReplayWebhookResponseSchema, create(ReplayWebhookResponseSchema, { replay }));
      printFields(out, replayFields(replay));
    },
  );

  leaf(
    webhooks
      .command("replay-status")
      .description("show a replay and its progress")
      .argument("<id>", "webhook id (wh_…)")
      .argument("<replay_id>", "replay id (rpl_…)"),
    async (json, id: string, replayId: string) => {
      const res = await conn.clients().webhooks.getReplay({ webhookId: id, replayId });
      if (json) return emit(GetReplayResponseSchema, res);
      printFields(out, replayFields(res.replay));
    },
  );

  // --- events --------------------------------------------------------------------------------------------
  const events = program.command("events").description("publish and inspect events");

  leaf(
    events
      .command("publish")
      .description("publish an event to every matching webhook")
      .requiredOption("--type <type>", "event type, e.g. document.created")
      .requiredOption("--data <json|@file>", "payload: a JSON object inline, @path to read a file, @- for stdin")
      .option("--idempotency-key <key>", "publishing the same key again returns the first event")
      .option("--ordering-key <key>", "deliveries with the same key stay in order"),
    async (json, opts: { type: string; data: string; idempotencyKey?: string; orderingKey?: string }) => {
      const payload = readPayload(opts.data);
      const res = await conn.clients().events.publishEvent({
        eventType: opts.type,
        payload,
        idempotencyKey: opts.idempotencyKey ?? "",
        orderingKey: opts.orderingKey ?? "",
      });
      if (json) return emit(PublishEventResponseSchema, res);
      // A new event's payload is the one sent, which the answer does not echo; a duplicate is the earlier
      // event, whose payload may differ, so it shows none (`events get` shows it).
      const event = res.event && !res.duplicate ? { ...res.event, payload } : res.event;
      printFields(out, [...eventFields(event), ["duplicate", String(res.duplicate)]]);
      if (res.duplicate) out.write("The idempotency key matched an earlier event; that event is shown.\n");
    },
  );

  leaf(
    events.command("get").description("show one event").argument("<id>", "event id (evt_…)"),
    async (json, id: string) => {
      const res = await conn.clients().events.getEvent({ eventId: id });
      if (json) return emit(GetEventResponseSchema, res);
      printFields(out, eventFields(res.event));
    },
  );

  leaf(
    listOptions(events.command("list").description("list events, oldest first (the next page is newer)").option("--type <type>", "only this event type")),
    async (json, opts: ListOptions & { type?: string }) => {
      const res = await paginate(
        opts,
        (pageToken) =>
          conn.clients().events.listEvents({ pageSize: opts.pageSize ?? 0, pageToken, eventType: opts.type ?? "" }),
        (into, page) => into.events.push(...page.events),
      );
      if (json) return emit(ListEventsResponseSchema, res);
      printTable(out, ["ID", "TYPE", "DELIVERIES", "ORDERING KEY", "CREATED"], res.events.map(eventRow), "No events.");
      moreHint(res.nextPageToken);
    },
  );

  // --- deliveries ----------------------------------------------------------------------------------------
  const deliveries = program.command("deliveries").description("inspect and retry deliveries");

  leaf(
    listOptions(
      deliveries
        .command("list")
        .description("list a webhook's deliveries")
        .requiredOption("--webhook <id>", "webhook id (wh_…)")
        .option("--status <status>", "pending, succeeded, failed, expired or cancelled"),
    ),
    async (json, opts: ListOptions & { webhook: string; status?: string }) => {
      const res = await paginate(
        opts,
        (pageToken) =>
          conn.clients().deliveries.listDeliveries({
            webhookId: opts.webhook,
            status: opts.status ?? "",
            pageSize: opts.pageSize ?? 0,
            pageToken,
          }),
        (into, page) => into.deliveries.push(...page.deliveries),
      );
      if (json) return emit(ListDeliveriesResponseSchema, res);
      printTable(
        out,
        ["ID", "STATUS", "EVENT", "TYPE", "ATTEMPTS", "LAST CODE", "NEXT ATTEMPT", "CREATED"],
        res.deliveries.map(deliveryRow),
        "No deliveries.",
      );
      moreHint(res.nextPageToken);
    },
  );

  leaf(
    deliveries.command("get").description("show one delivery").argument("<id>", "delivery id (dlv_…)"),
    async (json, id: string) => {
      const res = await conn.clients().deliveries.getDelivery({ deliveryId: id });
      if (json) return emit(GetDeliveryResponseSchema, res);
      printFields(out, deliveryFields(res.delivery));
    },
  );

  leaf(
    deliveries
      .command("attempts")
      .description("list a delivery's attempts (--json includes response bodies)")
      .argument("<id>", "delivery id (dlv_…)"),
    async (json, id: string) => {
      const res = await conn.clients().deliveries.listDeliveryAttempts({ deliveryId: id });
      if (json) return emit(ListDeliveryAttemptsResponseSchema, res);
      printTable(out, ["ATTEMPTED", "DURATION", "CODE", "ERROR"], res.attempts.map(attemptRow), "No attempts yet.");
    },
  );

  leaf(
    deliveries
      .command("retry")
      .description("queue a new attempt (works on failed and expired deliveries)")
      .argument("<id>", "delivery id (dlv_…)"),
    async (json, id: string) => {
      const res = await conn.clients().deliveries.retryDelivery({ deliveryId: id });
      if (json) return emit(RetryDeliveryResponseSchema, res);
      out.write(`Retry queued for delivery ${id}.\n`);
      printFields(out, deliveryFields(res.delivery));
    },
  );

  // --- tenants -------------------------------------------------------------------------------------------
  const tenants = program.command("tenants").description("manage tenants (admin keys)");

  leaf(
    tenants.command("create").description("create a tenant").argument("<name>", "tenant name"),
    async (json, name: string) => {
      const res = await conn.clients().admin.createTenant({ name });
      if (json) return emit(CreateTenantResponseSchema, res);
      printFields(out, tenantFields(res.tenant));
    },
  );

  leaf(listOptions(tenants.command("list").description("list tenants")), async (json, opts: ListOptions) => {
    const res = await paginate(
      opts,
      (pageToken) => conn.clients().admin.listTenants({ pageSize: opts.pageSize ?? 0, pageToken }),
      (into, page) => into.tenants.push(...page.tenants),
    );
    if (json) return emit(ListTenantsResponseSchema, res);
    printTable(out, ["ID", "NAME", "CREATED"], res.tenants.map(tenantRow), "No tenants.");
    moreHint(res.nextPageToken);
  });

  // --- keys ----------------------------------------------------------------------------------------------
  const keys = program.command("keys").description("manage API keys (admin keys)");

  leaf(
    keys
      .command("create")
      .description("create an API key for a tenant; prints the key once")
      .requiredOption("--tenant <id>", "the tenant the key belongs to")
      .option("--admin", "an admin key (may manage tenants and keys, and act on any tenant)"),
    async (json, opts: { tenant: string; admin?: boolean }) => {
      const res = await conn.clients().admin.createApiKey({ tenantId: opts.tenant, admin: opts.admin ?? false });
      if (json) return emit(CreateApiKeyResponseSchema, res);
      printFields(out, [...apiKeyFields(res.apiKey), ["key", res.key]]);
      out.write("The key is shown only once and stored only as a hash; store it now.\n");
    },
  );

  leaf(
    keys.command("revoke").description("revoke an API key").argument("<id>", "key id"),
    async (json, id: string) => {
      const res = await conn.clients().admin.revokeApiKey({ keyId: id });
      if (json) return emit(RevokeApiKeyResponseSchema, res);
      out.write(`Revoked key ${id}.\n`);
      printFields(out, apiKeyFields(res.apiKey));
    },
  );

  // --- audit ---------------------------------------------------------------------------------------------
  const audit = program.command("audit").description("read the audit log");

  leaf(
    listOptions(
      audit
        .command("list")
        .description("list audit log entries, oldest first (the next page is newer)")
        .option("--tenant <id>", "another tenant's log (admin keys; default: the tenant acted on)"),
    ),
    async (json, opts: ListOptions & { tenant?: string }) => {
      const res = await paginate(
        opts,
        (pageToken) =>
          conn.clients().admin.listAuditLog({ pageSize: opts.pageSize ?? 0, pageToken, tenantId: opts.tenant ?? "" }),
        (into, page) => into.entries.push(...page.entries),
      );
      if (json) return emit(ListAuditLogResponseSchema, res);
      printTable(out, ["CREATED", "ACTION", "RESOURCE", "ACTOR", "DETAILS"], res.entries.map(auditRow), "No audit entries.");
      moreHint(res.nextPageToken);
    },
  );

  return { program, conn };
}

/** `invalid_argument` for Code.InvalidArgument, as on the Connect wire. */
function codeName(code: Code): string {
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** The Node error code (ECONNREFUSED, …) in an error's cause chain when it is a "cannot connect" failure. */
function unreachableCause(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  let cur: unknown = err;
  while (cur instanceof Error && !seen.has(cur)) {
    seen.add(cur);
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string" && UNREACHABLE_CODES.has(code)) return code;
    if (cur instanceof AggregateError) {
      for (const inner of cur.errors) {
        const c = unreachableCause(inner);
        if (c) return c;
      }
    }
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

/**
 * Runs webhookctl with `argv` in process.argv form (node, script, args…) and returns the exit code:
 * 0 success, 1 the server answered with an error or could not be reached, 2 a usage error.
 */
export async function main(
  argv: string[],
  io: CliIO = { stdout: process.stdout, stderr: process.stderr, env: process.env },
): Promise<number> {
  const { program, conn } = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: "node" });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander has already printed the message (or the help).
      if (err.exitCode === 0) return 0;
      return 2;
    }
    if (err instanceof UsageError) {
      io.stderr.write(`error: ${err.message}\n`);
      return 2;
    }
    if (err instanceof ConnectError) {
      const netCode = unreachableCause(err);
      if (netCode) {
        io.stderr.write(`error: cannot reach webhookd at ${conn.baseUrl} (${netCode}); is the server running? (--url or WEBHOOKD_URL)\n`);
        return 1;
      }
      io.stderr.write(`error: ${codeName(err.code)}: ${err.rawMessage}\n`);
      return 1;
    }
    io.stderr.write(`error: ${errorMessage(err)}\n`);
    return 1;
  }
}
