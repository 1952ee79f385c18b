/**
 * `npm run bench`: the delivery pipeline benchmark (issue "Delivery pipeline", Benchmark section).
 *
 * Starts the production stack itself — a fresh Postgres database, a fresh NATS stream prefix,
 * `webhookd api` and `webhookd dispatcher` as separate processes — plus a local receiver in its own
 * process (bench/receiver.ts), then runs:
 *
 *   0. raw ceiling: plain keep-alive POSTs of the same 5 KB body straight to the receiver (undici);
 *   1. batch ingest (POST /events/batch, 100 per batch, a few batches at once) and sustained delivery;
 *  1b. delivery alone: the same events published with the webhooks paused, then set active together;
 *   R. the reference: a plain BullMQ-on-Redis sender (bench/bullmq-reference.ts) given the same events
 *      in the same batches, to the same receiver — the issue's yardstick, measured in this run; then, as
 *      1b, the same events enqueued with its worker paused, and the worker resumed;
 *      then the raw ceiling again (the host's speed drifts);
 *   2. single-event ingest (POST /events, ~32 concurrent clients);
 *   3. steady rate (500 events/s paced by a timer): publish → receive latency.
 *
 * Everything is measured in the same run on the same machine, so the ratios (delivery vs. the raw
 * ceiling) mean more than the absolute figures. Nothing is written to disk; the database, the stream and
 * every child process are removed at the end, also on error, Ctrl-C or the time limit.
 *
 * Knobs (flag or environment): --webhooks/BENCH_WEBHOOKS (100), --events/BENCH_EVENTS (20000), see
 * `npm run bench -- --help`. WEBHOOKD_* variables in the environment are passed through to the server
 * processes (e.g. WEBHOOKD_MAX_IN_FLIGHT), except the ones the benchmark sets itself.
 */
import { fork, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { Pool } from "undici";
import { deleteStream } from "../src/queue/jetstream.js";
import { reachable, startReference } from "./bullmq-reference.js";
import type { PhaseReport } from "./receiver.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------
// Options

interface Option {
  flag: string;
  env: string;
  def: number | string;
  help: string;
}

const OPTIONS = {
  webhooks: { flag: "webhooks", env: "BENCH_WEBHOOKS", def: 100, help: "webhooks, each subscribed to its own event type" },
  events: { flag: "events", env: "BENCH_EVENTS", def: 20_000, help: "events published in phase 1 (batch ingest)" },
  warmupEvents: { flag: "warmup-events", env: "BENCH_WARMUP_EVENTS", def: 10_000, help: "events published and delivered before any measurement" },
  payloadBytes: { flag: "payload-bytes", env: "BENCH_PAYLOAD_BYTES", def: 5_120, help: "size of each event's payload JSON" },
  batchSize: { flag: "batch-size", env: "BENCH_BATCH_SIZE", def: 100, help: "events per POST /events/batch (max 100)" },
  batchConcurrency: { flag: "batch-concurrency", env: "BENCH_BATCH_CONCURRENCY", def: 4, help: "batches in flight at once in phase 1" },
  rawSeconds: { flag: "raw-seconds", env: "BENCH_RAW_SECONDS", def: 5, help: "duration of the raw ceiling measurement" },
  receiverPorts: { flag: "receiver-ports", env: "BENCH_RECEIVER_PORTS", def: 1, help: "ports (origins) the receiver listens on; webhook i uses port i mod n" },
  rawConnections: { flag: "raw-connections", env: "BENCH_RAW_CONNECTIONS", def: 64, help: "connections (and requests in flight) of the raw ceiling" },
  singleConcurrency: { flag: "single-concurrency", env: "BENCH_SINGLE_CONCURRENCY", def: 32, help: "concurrent clients in phase 2" },
  singleSeconds: { flag: "single-seconds", env: "BENCH_SINGLE_SECONDS", def: 5, help: "phase 2 stops after this long…" },
  singleMax: { flag: "single-max", env: "BENCH_SINGLE_MAX", def: 5_000, help: "…or after this many events" },
  rate: { flag: "rate", env: "BENCH_RATE", def: 500, help: "events/s of phase 3" },
  rateSeconds: { flag: "rate-seconds", env: "BENCH_RATE_SECONDS", def: 10, help: "duration of phase 3" },
  drainSeconds: { flag: "drain-seconds", env: "BENCH_DRAIN_SECONDS", def: 90, help: "longest wait for a phase's deliveries" },
  maxSeconds: { flag: "max-seconds", env: "BENCH_MAX_SECONDS", def: 175, help: "hard limit for the whole run, cleanup included" },
  postgresUrl: { flag: "postgres-url", env: "BENCH_POSTGRES_URL", def: "postgres://postgres@127.0.0.1:5432/postgres", help: "admin connection (loopback only)" },
  natsUrl: { flag: "nats-url", env: "BENCH_NATS_URL", def: "nats://127.0.0.1:4222", help: "NATS JetStream (loopback only)" },
  reference: { flag: "reference", env: "BENCH_REFERENCE", def: "bullmq", help: "the reference sender run beside phase 1 on the same machine: bullmq (needs Redis) or none" },
  referenceConcurrency: { flag: "reference-concurrency", env: "BENCH_REFERENCE_CONCURRENCY", def: 64, help: "jobs the BullMQ worker runs at once" },
  redisUrl: { flag: "redis-url", env: "BENCH_REDIS_URL", def: "redis://127.0.0.1:6379", help: "Redis for the BullMQ reference (loopback only)" },
  fanoutWebhooks: {
    flag: "fanout-webhooks",
    env: "BENCH_FANOUT_WEBHOOKS",
    def: 0,
    help: "phase 4, off at 0: this many more webhooks, all subscribed to one event type (it takes a minute or two: raise --max-seconds)",
  },
  fanoutEvents: { flag: "fanout-events", env: "BENCH_FANOUT_EVENTS", def: 100, help: "events of that type published in phase 4, in batches" },
  serverNodeArgs: {
    flag: "server-node-args",
    env: "BENCH_SERVER_NODE_ARGS",
    // What README's Commands section runs the server roles with.
    def: "--max-semi-space-size=64",
    help: "node flags for the api and dispatcher, e.g. \"--max-semi-space-size=64 --cpu-prof --cpu-prof-dir=/tmp/prof\"",
  },
} satisfies Record<string, Option>;

type Options = { [K in keyof typeof OPTIONS]: (typeof OPTIONS)[K]["def"] extends number ? number : string };

function parseOptions(argv: string[]): Options {
  const given = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") {
      console.log("npm run bench -- [options]\n");
      for (const o of Object.values(OPTIONS)) console.log(`  --${o.flag.padEnd(20)} ${o.env.padEnd(26)} ${o.help} (default ${o.def})`);
      process.exit(0);
    }
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!match) throw new Error(`unexpected argument ${JSON.stringify(arg)} (see --help)`);
    const value = match[2] ?? argv[++i];
    if (value === undefined) throw new Error(`--${match[1]} needs a value`);
    given.set(match[1]!, value);
  }
  const known = new Set(Object.values(OPTIONS).map((o) => o.flag));
  for (const flag of given.keys()) if (!known.has(flag)) throw new Error(`unknown option --${flag} (see --help)`);
  const result: Record<string, number | string> = {};
  for (const [key, o] of Object.entries(OPTIONS) as [string, Option][]) {
    const raw = given.get(o.flag) ?? process.env[o.env];
    if (raw === undefined || raw === "") {
      result[key] = o.def;
    } else if (typeof o.def === "number") {
      const n = Number(raw);
      if (!Number.isFinite(n) || n <= 0) throw new Error(`--${o.flag} / ${o.env} must be a positive number, got ${JSON.stringify(raw)}`);
      result[key] = n;
    } else {
      result[key] = raw;
    }
  }
  const options = result as Options;
  options.batchSize = Math.min(100, Math.floor(options.batchSize));
  if (!["bullmq", "none"].includes(options.reference)) throw new Error(`--reference must be bullmq or none, got ${JSON.stringify(options.reference)}`);
  for (const url of [options.postgresUrl, options.natsUrl, options.redisUrl]) {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
    if (!(host === "localhost" || host === "::1" || /^127\./.test(host))) throw new Error(`${url}: the benchmark only talks to loopback addresses`);
  }
  return options;
}

// ---------------------------------------------------------------------------------------------------
// Resources, cleaned up in reverse order whatever happens

const cleanups: { name: string; run: () => Promise<unknown> }[] = [];
let cleaning: Promise<void> | undefined;
/** Set on Ctrl-C / SIGTERM / the time limit: the run is being torn down, its errors are noise. */
let interrupted = false;

function warn(message: string): void {
  if (!interrupted) console.error(message);
}

function onCleanup(name: string, run: () => Promise<unknown>): void {
  cleanups.push({ name, run });
}

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const { name, run } of cleanups.splice(0).reverse()) {
      try {
        await run();
      } catch (err) {
        console.error(`cleanup: ${name} failed: ${(err as Error).message}`);
      }
    }
  })();
  return cleaning;
}

async function createDatabase(adminUrl: string): Promise<string> {
  const name = `webhookd_bench_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  onCleanup(`drop database ${name}`, async () => {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    try {
      await client.query(`drop database if exists ${name} with (force)`);
    } finally {
      await client.end();
    }
  });
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

interface Child {
  name: string;
  child: ChildProcess;
  output(): string;
  waitFor(pattern: RegExp, timeoutMs: number): Promise<void>;
}

/** Stops a child: SIGTERM, then SIGKILL if it is still there after `graceMs`. */
async function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

function spawnWebhookd(role: "api" | "dispatcher", env: Record<string, string>, nodeArgs: string): Child {
  const child = spawn(process.execPath, [...nodeArgs.split(/\s+/).filter(Boolean), path.join(ROOT, "bin", "webhookd.js"), role], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const keep = (chunk: Buffer) => {
    out += chunk.toString();
    if (out.length > 256 * 1024) out = out.slice(-128 * 1024);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  onCleanup(`stop ${role}`, () => stopChild(child));
  return {
    name: role,
    child,
    output: () => out,
    async waitFor(pattern, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (!pattern.test(out)) {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`webhookd ${role} exited (${child.exitCode ?? child.signalCode}):\n${out}`);
        if (Date.now() > deadline) throw new Error(`webhookd ${role} did not print ${pattern} within ${timeoutMs} ms:\n${out}`);
        await sleep(50);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// The receiver process

interface Receiver {
  ports: number[];
  pid: number;
  stats(phase: string, detail?: boolean): Promise<PhaseReport & { unparsable: number }>;
}

async function startReceiver(portCount: number): Promise<Receiver> {
  const child = fork(path.join(ROOT, "bench", "receiver.ts"), [String(portCount)], {
    cwd: ROOT,
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  onCleanup("stop receiver", async () => {
    if (child.connected) child.send({ type: "stop" });
    await stopChild(child, 3_000);
  });
  const waiting = new Map<number, (report: PhaseReport & { unparsable: number }) => void>();
  let nextId = 1;
  const ports = await new Promise<number[]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the receiver did not start within 20 s")), 20_000);
    child.once("exit", (code) => reject(new Error(`the receiver exited (${code}) before listening`)));
    child.on("message", (msg: { type: string; ports?: number[]; id?: number }) => {
      if (msg.type === "listening") {
        clearTimeout(timer);
        resolve(msg.ports!);
      } else if (msg.type === "stats") {
        waiting.get(msg.id!)?.(msg as unknown as PhaseReport & { unparsable: number });
        waiting.delete(msg.id!);
      }
    });
  });
  return {
    ports,
    pid: child.pid!,
    stats(phase, detail = false) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        if (!child.connected) return reject(new Error("the receiver is gone"));
        waiting.set(id, resolve);
        child.send({ type: "stats", id, phase, detail });
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// CPU accounting from /proc: per process (group), per phase, in % of one core

const CLK_TCK = 100;

interface CpuSample {
  at: number;
  ticks: Record<string, number>;
  machineBusy: number;
  machineTotal: number;
}

function readTicks(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]); // utime + stime (fields 14, 15 of the full line)
  } catch {
    return 0;
  }
}

/** Postgres backends serving this database (their process title names it). */
function backendsOf(database: string): number[] {
  const pids: number[] = [];
  try {
    for (const entry of fs.readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const title = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8");
        if (title.startsWith("postgres: ") && title.includes(` ${database} `)) pids.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    // no /proc
  }
  return pids;
}

function pidsNamed(comm: string): number[] {
  const pids: number[] = [];
  try {
    for (const entry of fs.readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (fs.readFileSync(`/proc/${entry}/comm`, "utf8").trim() === comm) pids.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    // no /proc
  }
  return pids;
}

function cpuSampler(pids: Record<string, number>, database: string) {
  // Last ticks seen per pid: a process that exits between samples (a Postgres backend) keeps what it used.
  const last = new Map<number, { group: string; ticks: number }>();
  return (): CpuSample => {
    const groups: Record<string, number[]> = { postgres: backendsOf(database), nats: pidsNamed("nats-server"), redis: pidsNamed("redis-server") };
    for (const [name, pid] of Object.entries(pids)) groups[name] = [pid];
    for (const [group, list] of Object.entries(groups)) {
      for (const pid of list) {
        const ticks = readTicks(pid);
        if (ticks > 0) last.set(pid, { group, ticks });
      }
    }
    const ticks: Record<string, number> = {};
    for (const { group, ticks: t } of last.values()) ticks[group] = (ticks[group] ?? 0) + t;
    let machineBusy = 0;
    let machineTotal = 0;
    try {
      const cpu = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
      machineTotal = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
      machineBusy = machineTotal - cpu[3]! - cpu[4]!; // minus idle and iowait
    } catch {
      // no /proc
    }
    return { at: now(), ticks, machineBusy, machineTotal };
  };
}

interface CpuWindow {
  label: string;
  /** What the window did (requests, events, deliveries), for CPU time per item. */
  items: number;
  itemName: string;
  seconds: number;
  /** % of one core per process (group). */
  pct: Record<string, number>;
  /** % of the whole machine (all cores). */
  machine: number;
}

function cpuWindow(label: string, from: CpuSample, to: CpuSample, items: number, itemName: string): CpuWindow {
  const seconds = (to.at - from.at) / 1000;
  const pct: Record<string, number> = {};
  for (const name of Object.keys(to.ticks)) pct[name] = ((to.ticks[name]! - (from.ticks[name] ?? 0)) / CLK_TCK / seconds) * 100;
  const total = to.machineTotal - from.machineTotal;
  return { label, items, itemName, seconds, pct, machine: total > 0 ? ((to.machineBusy - from.machineBusy) / total) * 100 : NaN };
}

// ---------------------------------------------------------------------------------------------------
// Helpers

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

function summary(values: number[]): { n: number; p50: number; p99: number; max: number } {
  const sorted = Float64Array.from(values).sort();
  const list = Array.from(sorted);
  return { n: list.length, p50: percentile(list, 0.5), p99: percentile(list, 0.99), max: list.at(-1) ?? NaN };
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "n/a");
const ms = (n: number) => (Number.isFinite(n) ? `${fmt(n, n < 100 ? 1 : 0)} ms` : "n/a");

/** The padding that makes each payload about `bytes` long. */
function makePad(bytes: number): string {
  const sample = JSON.stringify({ phase: "p1", wh: 99, seq: 1000, sent_at: now(), pad: "" });
  return "x".repeat(Math.max(0, bytes - sample.length));
}

interface Expected {
  /** webhook index → seqs the API accepted. */
  seqs: Map<number, number[]>;
  count: number;
}

function newExpected(): Expected {
  return { seqs: new Map(), count: 0 };
}

function expect(expected: Expected, wh: number, seq: number): void {
  let list = expected.seqs.get(wh);
  if (!list) expected.seqs.set(wh, (list = []));
  list.push(seq);
  expected.count++;
}

interface DeliveryCheck {
  phase: string;
  expected: number;
  delivered: number;
  lost: number;
  unexpected: number;
  duplicates: number;
  orderViolations: number;
  latency: { n: number; p50: number; p99: number; max: number };
  firstAt: number;
  lastAt: number;
  drained: boolean;
  drainedAt: number;
}

// ---------------------------------------------------------------------------------------------------
// The benchmark

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const started = now();
  const deadline = started + (options.maxSeconds - 15) * 1000; // what is left is for cleanup
  const timeLeft = () => deadline - now();

  const watchdog = setTimeout(() => {
    interrupted = true;
    console.error(`\nbench: over the ${options.maxSeconds} s limit; cleaning up`);
    void cleanup().finally(() => process.exit(1));
  }, options.maxSeconds * 1000);
  watchdog.unref();
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      interrupted = true;
      console.error(`\nbench: ${signal}; cleaning up`);
      void cleanup().finally(() => process.exit(130));
    });
  }

  const M = Math.floor(options.webhooks);
  const N = Math.floor(options.events);
  const log = (msg: string) => interrupted || console.log(`[${fmt((now() - started) / 1000, 1).padStart(5)} s] ${msg}`);

  // --- the stack -------------------------------------------------------------------------------------
  const databaseUrl = await createDatabase(options.postgresUrl);
  const natsPrefix = `B${randomBytes(4).toString("hex").toUpperCase()}`;
  onCleanup(`delete stream ${natsPrefix}_DELIVERIES`, () => deleteStream(options.natsUrl, natsPrefix));
  log(`database ${new URL(databaseUrl).pathname.slice(1)}, NATS prefix ${natsPrefix}`);

  const receiver = await startReceiver(Math.floor(options.receiverPorts));
  const receiverOrigin = `http://127.0.0.1:${receiver.ports[0]}`;
  const hookOrigin = (wh: number) => `http://127.0.0.1:${receiver.ports[wh % receiver.ports.length]}`;
  log(`receiver on 127.0.0.1 port${receiver.ports.length > 1 ? "s" : ""} ${receiver.ports.join(", ")} (pid ${receiver.pid})`);

  const adminKey = `whk_${randomBytes(32).toString("base64url")}`;
  const apiPort = await freePort();
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const passThrough = Object.fromEntries(Object.entries(process.env).filter(([k, v]) => k.startsWith("WEBHOOKD_") && v !== undefined)) as Record<string, string>;
  const env: Record<string, string> = {
    ...passThrough,
    PATH: process.env.PATH ?? "",
    HOME: process.env.HOME ?? "/tmp",
    DATABASE_URL: databaseUrl,
    NATS_URL: options.natsUrl,
    WEBHOOKD_NATS_PREFIX: natsPrefix,
    WEBHOOKD_ALLOW_HTTP: "true",
    WEBHOOKD_ALLOWED_CIDRS: "127.0.0.0/8",
    WEBHOOKD_ADMIN_KEY: adminKey,
    // Both roles seal and open webhook signing secrets with it (required with DATABASE_URL).
    WEBHOOKD_ENCRYPTION_KEY: process.env.WEBHOOKD_ENCRYPTION_KEY || randomBytes(32).toString("base64"),
    WEBHOOKD_LISTEN: `127.0.0.1:${apiPort}`,
    WEBHOOKD_LOG_LEVEL: "warn",
  };
  const benchSets = ["WEBHOOKD_ENCRYPTION_KEY", "WEBHOOKD_NATS_PREFIX", "WEBHOOKD_ALLOW_HTTP", "WEBHOOKD_ALLOWED_CIDRS", "WEBHOOKD_ADMIN_KEY", "WEBHOOKD_LISTEN", "WEBHOOKD_LOG_LEVEL"];
  const tuned = Object.keys(passThrough).filter((k) => !benchSets.includes(k));
  const api = spawnWebhookd("api", env, options.serverNodeArgs);
  await api.waitFor(/listening on/, 60_000);
  const apiPool = new Pool(apiUrl, { connections: 128, pipelining: 1, keepAliveTimeout: 60_000 });
  onCleanup("close api client", () => apiPool.close());

  const call = async (method: string, urlPath: string, body?: unknown | string): Promise<{ status: number; json: any }> => {
    const res = await apiPool.request({
      method: method as "GET",
      path: urlPath,
      headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.body.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = text;
    }
    return { status: res.statusCode, json };
  };

  for (let ready = false; !ready; ) {
    const res = await call("GET", "/readyz").catch(() => ({ status: 0, json: undefined }));
    ready = res.status === 200;
    if (!ready) {
      if (now() - started > 60_000) throw new Error(`/readyz never answered 200: ${JSON.stringify(res.json)}`);
      await sleep(100);
    }
  }
  log(`api ready on ${apiUrl} (pid ${api.child.pid})`);
  const dispatcher = spawnWebhookd("dispatcher", env, options.serverNodeArgs);
  log(`dispatcher started (pid ${dispatcher.child.pid})${tuned.length ? `; passed through: ${tuned.join(", ")}` : ""}`);

  // The reference's worker joins once it runs; the sampler reads this object at every sample.
  const sampled: Record<string, number> = { bench: process.pid, receiver: receiver.pid, api: api.child.pid!, dispatcher: dispatcher.child.pid! };
  const sample = cpuSampler(sampled, new URL(databaseUrl).pathname.slice(1));
  const cpu: CpuWindow[] = [];

  // --- webhooks and warm-up ------------------------------------------------------------------------------
  const eventType = (wh: number) => `bench.w${wh}`;
  /** `count` webhooks, 20 created at a time; webhook i gets the URL path and event type given for it. */
  async function createWebhooks(count: number, pathOf: (i: number) => string, typeOf: (i: number) => string): Promise<string[]> {
    const ids: string[] = new Array(count);
    for (let i = 0; i < count; i += 20) {
      await Promise.all(
        Array.from({ length: Math.min(20, count - i) }, async (_, j) => {
          const res = await call("POST", "/webhooks", { url: `${hookOrigin(i + j)}${pathOf(i + j)}`, event_types: [typeOf(i + j)], description: "bench" });
          if (res.status !== 201 && res.status !== 200) throw new Error(`POST /webhooks answered ${res.status}: ${JSON.stringify(res.json)}`);
          ids[i + j] = res.json.webhook_id ?? res.json.webhook?.webhook_id;
        }),
      );
    }
    return ids;
  }
  const webhookIds = await createWebhooks(M, (wh) => `/hook/${wh}`, eventType);
  log(`${M} webhooks created`);

  const pad = makePad(options.payloadBytes);
  const eventJson = (phase: string, wh: number, seq: number, sentAt: number) =>
    `{"event_type":"${eventType(wh)}","payload":{"phase":"${phase}","wh":${wh},"seq":${seq},"sent_at":${sentAt},"pad":"${pad}"}}`;

  /** Waits until the receiver has every expected delivery of the phase (or no progress / time is up), then checks it. */
  async function awaitDeliveries(phase: string, expected: Expected, capMs: number, stallMs = 20_000): Promise<DeliveryCheck> {
    const until = Math.min(now() + capMs, deadline);
    let last = -1;
    let lastProgress = now();
    let drained = false;
    for (;;) {
      const stats = await receiver.stats(phase);
      if (stats.unique >= expected.count) {
        drained = true;
        break;
      }
      if (stats.unique !== last) {
        last = stats.unique;
        lastProgress = now();
      }
      if (now() > until || now() - lastProgress > stallMs) break;
      await sleep(100);
    }
    const drainedAt = now();
    // Give repeats that are about to arrive a moment, so "exactly once" is not judged too early.
    await sleep(drained ? 300 : 0);
    const report = await receiver.stats(phase, true);
    let lost = 0;
    let unexpected = 0;
    for (const [wh, seqs] of expected.seqs) {
      const got = new Set(report.seqs?.[String(wh)] ?? []);
      for (const seq of seqs) if (!got.has(seq)) lost++;
    }
    for (const [wh, seqs] of Object.entries(report.seqs ?? {})) {
      const want = new Set(expected.seqs.get(Number(wh)) ?? []);
      for (const seq of seqs) if (!want.has(seq)) unexpected++;
    }
    return {
      phase,
      expected: expected.count,
      delivered: report.unique,
      lost,
      unexpected,
      duplicates: report.duplicates,
      orderViolations: report.orderViolations,
      latency: summary(report.latencies ?? []),
      firstAt: report.firstAt,
      lastAt: report.lastAt,
      drained,
      drainedAt,
    };
  }

  /** `count` events round-robin over the webhooks, split among `batchConcurrency` publishers by webhook. */
  function publisherPlan(count: number): { wh: number; seq: number }[][] {
    const C = Math.max(1, Math.min(Math.floor(options.batchConcurrency), M));
    const perWorker: { wh: number; seq: number }[][] = Array.from({ length: C }, () => []);
    const nextSeq = new Array<number>(M).fill(1);
    for (let i = 0; i < count; i++) {
      const wh = i % M;
      perWorker[wh % C]!.push({ wh, seq: nextSeq[wh]++ });
    }
    return perWorker;
  }

  const batchFailures = new Map<string, number>();
  /** POSTs one batch of events (their JSON texts): true if the API accepted every one. Says why not, three times a phase. */
  async function postBatch(phase: string, events: string[]): Promise<boolean> {
    let why: string;
    try {
      const res = await call("POST", "/events/batch", `{"events":[${events.join(",")}]}`);
      if (res.status === 201 && Array.isArray(res.json?.events) && res.json.events.length === events.length) return true;
      why = `answered ${res.status}: ${JSON.stringify(res.json).slice(0, 300)}`;
    } catch (err) {
      why = `failed: ${(err as Error).message}`;
    }
    const failures = (batchFailures.get(phase) ?? 0) + 1;
    batchFailures.set(phase, failures);
    if (failures <= 3) warn(`${phase}: POST /events/batch ${why}`);
    return false;
  }

  /**
   * Publishes `count` events over POST /events/batch, round-robin over the webhooks. Each webhook belongs
   * to one of `batchConcurrency` publishers, which sends its batches one after another, so the order the
   * API accepted a webhook's events in is the seq order.
   */
  async function publishBatches(phase: string, expected: Expected, count: number): Promise<{ errors: number; lastAcceptedAt: number }> {
    const perWorker = publisherPlan(count);
    let errors = 0;
    let lastAcceptedAt = now();
    await Promise.all(
      perWorker.map(async (events) => {
        for (let i = 0; i < events.length; i += options.batchSize) {
          const batch = events.slice(i, i + options.batchSize);
          const sentAt = now();
          if (await postBatch(phase, batch.map((e) => eventJson(phase, e.wh, e.seq, sentAt)))) {
            for (const e of batch) expect(expected, e.wh, e.seq);
          } else errors++;
          lastAcceptedAt = now();
        }
      }),
    );
    return { errors, lastAcceptedAt };
  }

  {
    // The servers' JIT compiles their hot paths in the first thousands of calls: a measurement that
    // starts cold counts that compilation (a sixth of the dispatcher's CPU in phase 1 with a 100-event
    // warm-up), which a server that has run for a minute no longer pays.
    const warm = newExpected();
    const published = await publishBatches("warm", warm, options.warmupEvents);
    if (published.errors > 0) throw new Error(`warm-up: ${published.errors} batches failed`);
    const check = await awaitDeliveries("warm", warm, 60_000);
    if (!check.drained) throw new Error(`warm-up: ${check.delivered} of ${check.expected} deliveries arrived within 60 s; is the dispatcher running?\n${dispatcher.output()}`);
    log(`warm-up: ${fmt(check.delivered)} deliveries, e2e p50 ${ms(check.latency.p50)}`);
  }

  // --- phase 0: the raw ceiling --------------------------------------------------------------------------
  const rawBody =
    `{"event_id":"evt_01jbenchbenchbenchbenchbench","event_type":"bench.w0","timestamp":"${new Date().toISOString()}",` +
    `"payload":{"phase":"raw","sent_at":${now()},"pad":"${pad}"}}`;
  const rawHeaders = {
    "content-type": "application/json",
    "webhook-id": "evt_01jbenchbenchbenchbenchbench",
    "webhook-timestamp": String(Math.floor(Date.now() / 1000)),
    "webhook-signature": `v1,${randomBytes(32).toString("base64")}`,
    "user-agent": "webhookd-bench/0.1",
  };
  async function rawCeiling(connections: number, seconds: number): Promise<{ rps: number; errors: number; count: number }> {
    const pool = new Pool(receiverOrigin, { connections, pipelining: 1, keepAliveTimeout: 60_000 });
    let done = 0;
    let errors = 0;
    const t0 = now();
    const stopAt = t0 + seconds * 1000;
    await Promise.all(
      Array.from({ length: connections }, async () => {
        while (now() < stopAt) {
          try {
            const res = await pool.request({ method: "POST", path: "/raw", headers: rawHeaders, body: rawBody });
            await res.body.text();
            if (res.statusCode === 200) done++;
            else errors++;
          } catch {
            errors++;
          }
        }
      }),
    );
    const elapsed = (now() - t0) / 1000;
    await pool.close();
    return { rps: done / elapsed, errors, count: done };
  }
  // A quiet moment: what the stack (and everyone else on the machine) burns with nothing to do.
  let s0 = sample();
  await sleep(2_000);
  cpu.push(cpuWindow("idle (2 s, baseline)", s0, sample(), 0, "-"));

  s0 = sample();
  const raw = await rawCeiling(options.rawConnections, options.rawSeconds);
  let s1 = sample();
  cpu.push(cpuWindow(`raw ceiling (${options.rawConnections} conns)`, s0, s1, raw.count, "request"));
  log(`phase 0: raw ceiling ${fmt(raw.rps)} req/s with ${options.rawConnections} connections${raw.errors ? ` (${raw.errors} errors)` : ""}`);
  // The dispatcher's sender keeps WEBHOOKD_CONNECTIONS_PER_ORIGIN sockets per origin (16 unless set), and
  // every bench webhook has the same origin: the ceiling at that many connections is the fair comparison.
  const senderCap = Number(env.WEBHOOKD_CONNECTIONS_PER_ORIGIN) || 16;
  const rawAtCap = options.rawConnections === senderCap ? raw : await rawCeiling(senderCap, Math.min(3, options.rawSeconds));
  log(`phase 0: raw ceiling ${fmt(rawAtCap.rps)} req/s with ${senderCap} connections (the dispatcher's per-origin socket cap)`);

  // --- phase 1: batch ingest, sustained delivery ---------------------------------------------------------
  const p1 = newExpected();
  let p1Errors = 0;
  let p1Ingest = NaN;
  let p1Check: DeliveryCheck | undefined;
  let p1Start = NaN;
  let p1AtIngestEnd = { delivered: 0, at: NaN };
  {
    log(`phase 1: publishing ${fmt(N)} events of ${fmt(options.payloadBytes)} B in batches of ${options.batchSize}, ${Math.min(Math.floor(options.batchConcurrency), M)} batches in flight`);
    s0 = sample();
    const t0 = now();
    p1Start = t0;
    const published = await publishBatches("p1", p1, N);
    p1Errors = published.errors;
    const tIngested = published.lastAcceptedAt;
    p1Ingest = p1.count / ((tIngested - t0) / 1000);
    s1 = sample();
    const p1s0 = s0;
    cpu.push(cpuWindow("phase 1: batch ingest", s0, s1, p1.count, "event accepted"));
    log(`phase 1: ${fmt(p1.count)} events accepted in ${fmt((tIngested - t0) / 1000, 2)} s = ${fmt(p1Ingest)} events/s${p1Errors ? `, ${p1Errors} failed batches` : ""}`);
    const mid = await receiver.stats("p1");
    p1AtIngestEnd = { delivered: mid.unique, at: tIngested };
    log(`phase 1: ${fmt(mid.unique)} delivered by the end of ingest; waiting for the rest`);
    p1Check = await awaitDeliveries("p1", p1, options.drainSeconds * 1000);
    const s2 = sample();
    cpu.push(cpuWindow("phase 1: delivery after ingest", s1, s2, p1Check.delivered - mid.unique, "delivery"));
    cpu.push(cpuWindow("phase 1: whole (ingest + delivery)", p1s0, s2, p1Check.delivered, "event delivered"));
    const span = (p1Check.lastAt - p1Check.firstAt) / 1000;
    log(
      `phase 1: ${fmt(p1Check.delivered)}/${fmt(p1Check.expected)} delivered, ${fmt(p1Check.delivered / span)} deliveries/s ` +
        `(first → last receipt ${fmt(span, 2)} s)${p1Check.drained ? "" : " — NOT DRAINED"}`,
    );
  }

  // --- phase 1b: delivery alone, from a backlog ------------------------------------------------------------
  // The webhooks are paused while the events go in and set active again together: what the dispatcher
  // and Postgres deliver with no ingest beside them, the figure a dispatcher is sized by.
  const p1b = newExpected();
  let p1bCheck: DeliveryCheck | undefined;
  if (timeLeft() > 60_000) {
    const setStatus = async (status: string) => {
      for (let wh = 0; wh < M; wh += 20) {
        await Promise.all(
          webhookIds.slice(wh, wh + 20).map(async (id) => {
            const res = await call("PUT", `/webhooks/${id}`, { status });
            if (res.status !== 200) throw new Error(`PUT /webhooks/${id} {status: ${status}} answered ${res.status}: ${JSON.stringify(res.json)}`);
          }),
        );
      }
    };
    await setStatus("paused");
    // The dispatcher reads a webhook at most a second old before each attempt.
    await sleep(1_500);
    log(`phase 1b: ${fmt(N)} events published with the webhooks paused`);
    const published = await publishBatches("p1b", p1b, N);
    if (published.errors > 0) warn(`phase 1b: ${published.errors} batches failed`);
    await sleep(1_000);
    const early = await receiver.stats("p1b");
    if (early.unique > 0) warn(`phase 1b: ${early.unique} deliveries arrived while their webhooks were paused`);
    const s0 = sample();
    await setStatus("active");
    p1bCheck = await awaitDeliveries("p1b", p1b, options.drainSeconds * 1000);
    cpu.push(cpuWindow("phase 1b: delivery from a backlog", s0, sample(), p1bCheck.delivered, "delivery"));
    log(`phase 1b: ${fmt(p1bCheck.delivered)}/${fmt(p1bCheck.expected)} delivered, ${fmt(p1bCheck.delivered / ((p1bCheck.lastAt - p1bCheck.firstAt) / 1000))} deliveries/s (first → last receipt)`);
  }

  // --- the reference: a plain BullMQ sender, the same events, the same receiver ----------------------------
  // The issue's yardstick, measured here rather than quoted: between the two ceilings, like phase 1.
  const ref = newExpected();
  const ref1b = newExpected();
  let refCheck: DeliveryCheck | undefined;
  let ref1bCheck: DeliveryCheck | undefined;
  let refNote = "skipped (--reference none)";
  if (options.reference === "bullmq" && !(await reachable(options.redisUrl))) {
    refNote = `skipped: no Redis at ${options.redisUrl}`;
    warn(`reference: ${refNote}`);
  } else if (options.reference === "bullmq" && timeLeft() < 45_000) {
    refNote = "skipped (time budget)";
  } else if (options.reference === "bullmq") {
    try {
      const reference = await startReference({
        root: ROOT,
        redisUrl: options.redisUrl,
        queue: `webhookd-bench-${randomBytes(4).toString("hex")}`,
        concurrency: Math.floor(options.referenceConcurrency),
        connectionsPerOrigin: senderCap,
        // The servers' flags: measured otherwise, the reference ran with a smaller young generation.
        nodeArgs: options.serverNodeArgs.split(/\s+/).filter(Boolean),
      });
      onCleanup("stop the BullMQ reference", () => reference.stop());
      sampled.bullmq = reference.workerPid;
      log(`reference: BullMQ worker ready (pid ${reference.workerPid}, concurrency ${Math.floor(options.referenceConcurrency)}); enqueuing ${fmt(N)} events as phase 1 published them`);
      // The same batches as phase 1, by the same publishers: a webhook's events are enqueued in seq order.
      const enqueueAll = (phase: string, expected: Expected, count: number) =>
        Promise.all(
          publisherPlan(count).map(async (events) => {
            for (let i = 0; i < events.length; i += options.batchSize) {
              const batch = events.slice(i, i + options.batchSize);
              const sentAt = now();
              await reference.enqueue(
                batch.map((e) => ({
                  eventId: `evt_${phase}_${e.wh}_${e.seq}`,
                  eventType: eventType(e.wh),
                  url: `${hookOrigin(e.wh)}/hook/${e.wh}`,
                  payload: { phase, wh: e.wh, seq: e.seq, sent_at: sentAt, pad },
                })),
              );
              for (const e of batch) expect(expected, e.wh, e.seq);
            }
          }),
        );
      // Warmed up as webhookd was: measured cold, its JIT's first thousands of calls made it 25–33 % slower
      // than it runs warm, and the comparison flattered webhookd.
      const refWarm = newExpected();
      await enqueueAll("refwarm", refWarm, options.warmupEvents);
      const warmed = await awaitDeliveries("refwarm", refWarm, 60_000);
      if (!warmed.drained) throw new Error(`warm-up: ${warmed.delivered} of ${warmed.expected} deliveries arrived within 60 s`);
      const s0 = sample();
      await enqueueAll("ref", ref, N);
      refCheck = await awaitDeliveries("ref", ref, options.drainSeconds * 1000);
      cpu.push(cpuWindow("reference: BullMQ (enqueue + delivery)", s0, sample(), refCheck.delivered, "event delivered"));
      const rate = refCheck.delivered / ((refCheck.lastAt - refCheck.firstAt) / 1000);
      refNote = `${fmt(rate)} deliveries/s`;
      log(`reference: ${fmt(refCheck.delivered)}/${fmt(refCheck.expected)} delivered, ${fmt(rate)} deliveries/s (first → last receipt)`);
      // Phase 1b's counterpart: the worker paused while the same events go in, then resumed.
      if (timeLeft() > 45_000) {
        await reference.pause();
        await enqueueAll("ref1b", ref1b, N);
        await sleep(1_000);
        const early = await receiver.stats("ref1b");
        if (early.unique > 0) warn(`reference 1b: ${early.unique} deliveries arrived while the worker was paused`);
        const s1 = sample();
        reference.resume();
        ref1bCheck = await awaitDeliveries("ref1b", ref1b, options.drainSeconds * 1000);
        cpu.push(cpuWindow("reference 1b: BullMQ from a backlog", s1, sample(), ref1bCheck.delivered, "delivery"));
        log(`reference 1b: ${fmt(ref1bCheck.delivered)}/${fmt(ref1bCheck.expected)} delivered, ${fmt(ref1bCheck.delivered / ((ref1bCheck.lastAt - ref1bCheck.firstAt) / 1000))} deliveries/s (first → last receipt)`);
      }
      await reference.stop();
      delete sampled.bullmq;
    } catch (err) {
      // The yardstick failing is no reason to lose webhookd's own figures.
      refCheck = undefined;
      ref1bCheck = undefined;
      refNote = `failed: ${(err as Error).message}`;
      warn(`reference: ${refNote}`);
    }
  }

  // The host's speed drifts (the development machine is a VM on a shared host: its ceiling moved between
  // 14,000 and 31,000 req/s within an hour), so the ceiling is measured again right after phase 1.
  const rawAfter = await rawCeiling(options.rawConnections, options.rawSeconds);
  log(`phase 1: raw ceiling ${fmt(rawAfter.rps)} req/s with ${options.rawConnections} connections, again after phase 1`);

  // --- phase 2: single-event ingest ---------------------------------------------------------------------
  const p2 = newExpected();
  let p2Errors = 0;
  let p2Ingest = NaN;
  let p2Publish = summary([]);
  let p2Check: DeliveryCheck | undefined;
  if (timeLeft() > 30_000) {
    const C = Math.max(1, Math.min(Math.floor(options.singleConcurrency), M));
    const nextSeq = new Array<number>(M).fill(1);
    const max = Math.floor(options.singleMax);
    let claimed = 0;
    const publishMs: number[] = [];
    log(`phase 2: POST /events one at a time, ${C} clients, for ${options.singleSeconds} s or ${fmt(max)} events`);
    s0 = sample();
    const t0 = now();
    const stopAt = t0 + options.singleSeconds * 1000;
    let tLast = t0;
    await Promise.all(
      Array.from({ length: C }, async (_, c) => {
        // Client c owns the webhooks ≡ c (mod C): one request in flight per webhook keeps its order defined.
        const owned = Array.from({ length: Math.ceil((M - c) / C) }, (_, j) => c + j * C);
        for (let j = 0; claimed < max && now() < stopAt; j++) {
          claimed++;
          const wh = owned[j % owned.length]!;
          const seq = nextSeq[wh]++;
          const sentAt = now();
          try {
            const res = await call("POST", "/events", eventJson("p2", wh, seq, sentAt));
            publishMs.push(now() - sentAt);
            if (res.status === 201) expect(p2, wh, seq);
            else {
              p2Errors++;
              if (p2Errors <= 3) warn(`POST /events answered ${res.status}: ${JSON.stringify(res.json).slice(0, 300)}`);
            }
          } catch (err) {
            p2Errors++;
            if (p2Errors <= 3) warn(`POST /events failed: ${(err as Error).message}`);
          }
          tLast = now();
        }
      }),
    );
    p2Ingest = p2.count / ((tLast - t0) / 1000);
    p2Publish = summary(publishMs);
    s1 = sample();
    cpu.push(cpuWindow("phase 2: single ingest", s0, s1, p2.count, "event accepted"));
    log(`phase 2: ${fmt(p2.count)} events accepted = ${fmt(p2Ingest)} events/s; POST p50 ${ms(p2Publish.p50)}, p99 ${ms(p2Publish.p99)}${p2Errors ? `, ${p2Errors} errors` : ""}`);
    p2Check = await awaitDeliveries("p2", p2, Math.min(options.drainSeconds, 45) * 1000);
    log(`phase 2: ${fmt(p2Check.delivered)}/${fmt(p2Check.expected)} delivered${p2Check.drained ? "" : " — NOT DRAINED"}`);
  } else {
    log("phase 2: skipped (time budget)");
  }

  // --- phase 3: steady rate --------------------------------------------------------------------------------
  const p3 = newExpected();
  let p3Errors = 0;
  let p3Achieved = NaN;
  let p3MaxLag = NaN;
  let p3Skipped = 0;
  let p3Publish = summary([]);
  let p3Check: DeliveryCheck | undefined;
  if (timeLeft() > options.rateSeconds * 1000 + 15_000) {
    const total = Math.floor(options.rate * options.rateSeconds);
    const nextSeq = new Array<number>(M).fill(1);
    const chains = new Array<Promise<void>>(M).fill(Promise.resolve());
    const publishMs: number[] = [];
    let maxLag = 0;
    let sent = 0;
    let skipped = 0;
    let tLast = 0;
    log(`phase 3: ${fmt(options.rate)} events/s paced for ${options.rateSeconds} s (${fmt(total)} events)`);
    s0 = sample();
    const t0 = now();
    // Events still waiting for their webhook's previous POST this long after the window are not sent:
    // the API is behind the rate, and the phase stays bounded.
    const giveUpAt = t0 + options.rateSeconds * 1000 + 2_000;
    const publishOne = (i: number) => {
      const wh = i % M;
      const seq = nextSeq[wh]++;
      const scheduled = t0 + (i * 1000) / options.rate;
      // A webhook's next event waits for its previous POST, so that its order is defined.
      chains[wh] = chains[wh]!.then(async () => {
        const sentAt = now();
        if (sentAt > giveUpAt) {
          skipped++;
          return;
        }
        maxLag = Math.max(maxLag, sentAt - scheduled);
        try {
          const res = await call("POST", "/events", eventJson("p3", wh, seq, sentAt));
          publishMs.push(now() - sentAt);
          if (res.status === 201) expect(p3, wh, seq);
          else {
            p3Errors++;
            if (p3Errors <= 3) warn(`POST /events answered ${res.status}: ${JSON.stringify(res.json).slice(0, 300)}`);
          }
        } catch (err) {
          p3Errors++;
          if (p3Errors <= 3) warn(`POST /events failed: ${(err as Error).message}`);
        }
        tLast = now();
      });
    };
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        const due = Math.min(total, Math.floor(((now() - t0) / 1000) * options.rate) + 1);
        while (sent < due) publishOne(sent++);
        if (sent >= total) {
          clearInterval(timer);
          resolve();
        }
      }, 2);
    });
    await Promise.all(chains);
    p3Achieved = p3.count / ((tLast - t0) / 1000);
    p3MaxLag = maxLag;
    p3Skipped = skipped;
    p3Publish = summary(publishMs);
    s1 = sample();
    cpu.push(cpuWindow(`phase 3: steady ${options.rate}/s`, s0, s1, p3.count, "event accepted"));
    log(`phase 3: ${fmt(p3.count)} accepted at ${fmt(p3Achieved)} events/s (pacing lag max ${ms(maxLag)}${skipped ? `; ${fmt(skipped)} not sent: the API fell behind` : ""}); POST p50 ${ms(p3Publish.p50)}, p99 ${ms(p3Publish.p99)}${p3Errors ? `, ${p3Errors} errors` : ""}`);
    p3Check = await awaitDeliveries("p3", p3, Math.min(options.drainSeconds, 30) * 1000);
    log(`phase 3: ${fmt(p3Check.delivered)}/${fmt(p3Check.expected)} delivered; e2e p50 ${ms(p3Check.latency.p50)}, p99 ${ms(p3Check.latency.p99)}`);
  } else {
    log("phase 3: skipped (time budget)");
  }

  // --- phase 4 (opt-in): fan-out ----------------------------------------------------------------------------
  // Many webhooks on one event type, each event to all of them: thousands of lanes busy at once, which
  // the phases above (a hundred webhooks) never see. The receiver tells the webhooks apart by URL path.
  const F = Math.floor(options.fanoutWebhooks);
  const p4 = newExpected();
  let p4Check: DeliveryCheck | undefined;
  let p4Errors = 0;
  let p4Rate = NaN;
  if (F > 0 && timeLeft() > 90_000) {
    await createWebhooks(F, (i) => `/fan/${i}`, () => "fanout.created");
    const E = Math.floor(options.fanoutEvents);
    log(`phase 4: ${fmt(F)} webhooks on one event type; publishing ${fmt(E)} events, ${fmt(F * E)} deliveries`);
    s0 = sample();
    // One batch after another: the order the API accepts them in is every webhook's seq order.
    for (let first = 1; first <= E; first += options.batchSize) {
      const seqs = Array.from({ length: Math.min(options.batchSize, E - first + 1) }, (_, k) => first + k);
      const sentAt = now();
      const events = seqs.map((seq) => `{"event_type":"fanout.created","payload":{"phase":"p4","seq":${seq},"sent_at":${sentAt},"pad":"${pad}"}}`);
      if (await postBatch("phase 4", events)) for (const seq of seqs) for (let i = 0; i < F; i++) expect(p4, i, seq);
      else p4Errors++;
    }
    p4Check = await awaitDeliveries("p4", p4, options.drainSeconds * 1000);
    cpu.push(cpuWindow("phase 4: fan-out", s0, sample(), p4Check.delivered, "delivery"));
    const span = (p4Check.lastAt - p4Check.firstAt) / 1000;
    p4Rate = p4Check.delivered / span;
    log(`phase 4: ${fmt(p4Check.delivered)}/${fmt(p4Check.expected)} delivered, ${fmt(p4Rate)} deliveries/s (first → last receipt ${fmt(span, 2)} s)${p4Check.drained ? "" : " — NOT DRAINED"}`);
  } else if (F > 0) {
    log("phase 4: skipped (time budget: raise --max-seconds)");
  }

  // --- what the database says ------------------------------------------------------------------------------
  let dbLine = "";
  {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      const statuses = await client.query<{ status: string; n: string }>("select status, count(*) as n from deliveries group by status order by status");
      const attempts = await client.query<{ n: string }>("select count(*) as n from delivery_attempts");
      dbLine = `${statuses.rows.map((r) => `${r.status} ${fmt(Number(r.n))}`).join(", ")}; attempts ${fmt(Number(attempts.rows[0]!.n))}`;
    } finally {
      await client.end();
    }
  }

  // --- the report ------------------------------------------------------------------------------------------
  // webhookd's phases only: the reference keeps no order and its losses are not webhookd's.
  const checks = [p1Check, p1bCheck, p2Check, p3Check, p4Check].filter((c): c is DeliveryCheck => c !== undefined);
  // Read again at the end: a repeat that came after its phase was judged (a redelivery, 30 s later) counts.
  for (const c of [...checks, ...[refCheck, ref1bCheck].filter((c): c is DeliveryCheck => c !== undefined)]) {
    const late = await receiver.stats(c.phase);
    c.duplicates = late.duplicates;
    c.orderViolations = late.orderViolations;
  }
  const sum = (f: (c: DeliveryCheck) => number) => checks.reduce((s, c) => s + f(c), 0);
  const p1Span = p1Check ? (p1Check.lastAt - p1Check.firstAt) / 1000 : NaN;
  const p1Rate = p1Check ? p1Check.delivered / p1Span : NaN;
  const p1bRate = p1bCheck ? p1bCheck.delivered / ((p1bCheck.lastAt - p1bCheck.firstAt) / 1000) : NaN;
  const refRate = refCheck ? refCheck.delivered / ((refCheck.lastAt - refCheck.firstAt) / 1000) : NaN;
  const ref1bRate = ref1bCheck ? ref1bCheck.delivered / ((ref1bCheck.lastAt - ref1bCheck.firstAt) / 1000) : NaN;
  const rows: [string, string][] = [
    [`raw ceiling, ${options.rawConnections} connections (before / after phase 1)`, `${fmt(raw.rps)} / ${fmt(rawAfter.rps)} req/s`],
    [`raw ceiling, ${senderCap} connections (sender's per-origin cap)`, `${fmt(rawAtCap.rps)} req/s`],
    ["sustained deliveries (phase 1, first → last receipt)", `${fmt(p1Rate)} deliveries/s`],
    [
      `  ratio to raw ceiling (${options.rawConnections} conns before / after; ${senderCap} conns)`,
      `${fmt((p1Rate / raw.rps) * 100, 1)} % / ${fmt((p1Rate / rawAfter.rps) * 100, 1)} %; ${fmt((p1Rate / rawAtCap.rps) * 100, 1)} %`,
    ],
    ["  ingest start → last delivery (phase 1)", p1Check ? `${fmt((p1Check.lastAt - p1Start) / 1000, 2)} s (${fmt(p1Check.delivered / ((p1Check.lastAt - p1Start) / 1000))} deliveries/s)` : "n/a"],
    [
      "  backlog drain after ingest ended (phase 1)",
      p1Check && p1Check.delivered - p1AtIngestEnd.delivered >= 500
        ? `${fmt((p1Check.delivered - p1AtIngestEnd.delivered) / ((p1Check.lastAt - p1AtIngestEnd.at) / 1000))} deliveries/s (${fmt(p1Check.delivered - p1AtIngestEnd.delivered)} left at ingest end)`
        : `n/a (${fmt(p1Check ? p1Check.delivered - p1AtIngestEnd.delivered : NaN)} left at ingest end: delivery kept up)`,
    ],
    [
      "reference: BullMQ on Redis, same events (unordered, no record)",
      refCheck ? `${refNote} (${fmt((refRate / raw.rps) * 100, 1)} % / ${fmt((refRate / rawAfter.rps) * 100, 1)} % of the ceiling before / after)` : refNote,
    ],
    ["  webhookd phase 1 / reference", refCheck ? `${fmt(p1Rate / refRate, 2)}` : "n/a"],
    [
      "delivery alone, from a backlog (phase 1b)",
      p1bCheck ? `${fmt(p1bRate)} deliveries/s (${fmt((p1bRate / raw.rps) * 100, 1)} % / ${fmt((p1bRate / rawAfter.rps) * 100, 1)} % of the ceiling before / after phase 1)` : "skipped",
    ],
    [
      "reference, delivery alone from a backlog (1b)",
      ref1bCheck ? `${fmt(ref1bRate)} deliveries/s (${fmt((ref1bRate / raw.rps) * 100, 1)} % / ${fmt((ref1bRate / rawAfter.rps) * 100, 1)} % of the ceiling before / after)` : "skipped",
    ],
    ["  webhookd phase 1b / reference 1b", ref1bCheck && p1bCheck ? `${fmt(p1bRate / ref1bRate, 2)}` : "n/a"],
    [`batch ingest (POST /events/batch ×${options.batchSize})`, `${fmt(p1Ingest)} events/s`],
    [`single ingest (POST /events, ${Math.min(Math.floor(options.singleConcurrency), M)} clients)`, `${fmt(p2Ingest)} events/s (POST p50 ${ms(p2Publish.p50)}, p99 ${ms(p2Publish.p99)})`],
    ["e2e latency under load (phase 1) p50 / p99", p1Check ? `${ms(p1Check.latency.p50)} / ${ms(p1Check.latency.p99)}` : "n/a"],
    ["e2e latency, single ingest (phase 2) p50 / p99", p2Check ? `${ms(p2Check.latency.p50)} / ${ms(p2Check.latency.p99)}` : "n/a"],
    [`steady ${fmt(options.rate)}/s (phase 3) e2e p50 / p99`, p3Check ? `${ms(p3Check.latency.p50)} / ${ms(p3Check.latency.p99)} (achieved ${fmt(p3Achieved)}/s, pacing lag max ${ms(p3MaxLag)}${p3Skipped ? `, ${fmt(p3Skipped)} not sent` : ""})` : "skipped"],
    ...(F > 0
      ? [[
          `fan-out (phase 4): ${fmt(F)} webhooks × ${fmt(Math.floor(options.fanoutEvents))} events`,
          p4Check ? `${fmt(p4Rate)} deliveries/s (first → last receipt)` : "skipped",
        ] as [string, string]]
      : []),
    ["order violations", fmt(sum((c) => c.orderViolations))],
    ["lost (accepted, never received)", fmt(sum((c) => c.lost))],
    ["duplicates (received more than once)", fmt(sum((c) => c.duplicates))],
    ["unexpected (received, not accepted)", fmt(sum((c) => c.unexpected))],
    F > 0
      ? ["publish errors (phase 1 batches / 2 / 3 / 4 batches)", `${p1Errors} / ${p2Errors} / ${p3Errors} / ${p4Errors}`]
      : ["publish errors (phase 1 batches / 2 / 3)", `${p1Errors} / ${p2Errors} / ${p3Errors}`],
    ["deliveries in the database", dbLine],
  ];
  const perPhase = (name: string, c: DeliveryCheck | undefined) =>
    c
      ? `${name}: ${fmt(c.delivered)}/${fmt(c.expected)} delivered, lost ${c.lost}, dup ${c.duplicates}, order violations ${c.orderViolations}${c.drained ? "" : ", NOT DRAINED"}`
      : `${name}: skipped`;

  const width = Math.max(...rows.map(([k]) => k.length));
  const line = "─".repeat(width + 48);
  console.log(`\nwebhookd delivery benchmark — ${M} webhooks, ${fmt(options.payloadBytes)} B payloads, ${fmt(N)} events in phase 1, api + dispatcher as separate processes`);
  console.log(line);
  for (const [k, v] of rows) console.log(`${k.padEnd(width)}  ${v}`);
  console.log(line);
  for (const l of [perPhase("phase 1", p1Check), perPhase("phase 1b", p1bCheck), perPhase("reference", refCheck), perPhase("reference 1b", ref1bCheck), perPhase("phase 2", p2Check), perPhase("phase 3", p3Check), ...(F > 0 ? [perPhase("phase 4", p4Check)] : [])]) console.log(l);
  console.log(line);

  const names = ["bench", "receiver", "api", "dispatcher", "postgres", "nats", ...(refCheck ? ["bullmq", "redis"] : [])];
  const labelWidth = Math.max(...cpu.map((w) => w.label.length));
  const head = (cols: string[]) => `${"".padEnd(labelWidth)}${cols.map((n) => n.padStart(11)).join("")}`;
  console.log(
    `CPU, % of one core, per process (postgres: the backends of the bench database; nats: the whole server, shared; ` +
      `machine: all ${os.cpus().length} cores, everyone's load included)`,
  );
  console.log(`${head([...names, "machine"])}    seconds`);
  for (const w of cpu) {
    console.log(`${w.label.padEnd(labelWidth)}${[...names.map((n) => w.pct[n] ?? NaN), w.machine].map((v) => fmt(v).padStart(11)).join("")}    ${fmt(w.seconds, 1)}`);
  }
  console.log("CPU time per item, ms (less sensitive to a busy machine than rates)");
  console.log(`${head(names)}    per`);
  for (const w of cpu) {
    const perItem = names.map((n) => (w.items > 0 ? ((w.pct[n] ?? NaN) / 100) * w.seconds * 1000 / w.items : NaN));
    console.log(`${w.label.padEnd(labelWidth)}${perItem.map((v) => fmt(v, 3).padStart(11)).join("")}    ${w.itemName} (${fmt(w.items)})`);
  }
  console.log(line);

  for (const child of [api, dispatcher]) {
    const lines = child.output().split("\n").filter((l) => l.trim() && !/listening on/.test(l));
    if (lines.length > 0) {
      console.log(`webhookd ${child.name} logged ${lines.length} line(s) at warn or above; the first few:`);
      for (const l of lines.slice(0, 5)) console.log(`  ${l.slice(0, 300)}`);
    }
  }

  const bad = sum((c) => c.lost) + sum((c) => c.orderViolations) + (checks.every((c) => c.drained) ? 0 : 1);
  clearTimeout(watchdog);
  return bad > 0 ? 1 : 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  if (!interrupted) console.error(`bench failed: ${(err as Error).stack ?? err}`);
  code = 1;
} finally {
  await cleanup();
}
process.exit(code);
