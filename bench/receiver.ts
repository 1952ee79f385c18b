/**
 * The benchmark's webhook receiver, run as a child process of bench/run.ts (forked with an IPC channel).
 *
 * A plain keep-alive node:http server that answers 200 "ok" as soon as a request's body has arrived, then
 * records what the body carries: `payload.phase`, `payload.wh` (webhook index; for an event sent to many
 * webhooks, the n of the URL path `/fan/<n>` instead), `payload.seq` (position in that webhook's order,
 * as the benchmark published it) and `payload.sent_at` (publish time, ms since the epoch). Reports go back
 * to the parent over IPC on request.
 *
 * Parent → child: {type:"stats", id, phase} | {type:"stop"}
 * Child → parent: {type:"listening", ports} | {type:"stats", id, ...PhaseReport}
 */
import http from "node:http";

export interface PhaseReport {
  phase: string;
  /** Every request of the phase, repeats included. */
  requests: number;
  /** Distinct (webhook, seq) pairs received. */
  unique: number;
  duplicates: number;
  /** First receipts whose seq was below one already received for the same webhook. */
  orderViolations: number;
  /** Receive time of the first and the last first-receipt (ms since the epoch, fractional). */
  firstAt: number;
  lastAt: number;
  /** receive − sent_at of each first receipt, ms. Only when asked for (`withDetail`). */
  latencies?: number[];
  /** Distinct seqs received per webhook index. Only when asked for (`withDetail`). */
  seqs?: Record<string, number[]>;
}

interface PhaseState {
  requests: number;
  duplicates: number;
  orderViolations: number;
  firstAt: number;
  lastAt: number;
  latencies: number[];
  /** webhook index → seqs received (first receipts) and the highest so far. */
  perWebhook: Map<number, { seen: Set<number>; max: number }>;
}

const now = () => performance.timeOrigin + performance.now();
const phases = new Map<string, PhaseState>();
let unparsable = 0;

function phaseState(name: string): PhaseState {
  let state = phases.get(name);
  if (!state) {
    state = { requests: 0, duplicates: 0, orderViolations: 0, firstAt: 0, lastAt: 0, latencies: [], perWebhook: new Map() };
    phases.set(name, state);
  }
  return state;
}

function record(body: string, at: number, path: string): void {
  let payload: { phase?: unknown; wh?: unknown; seq?: unknown; sent_at?: unknown } | undefined;
  try {
    payload = (JSON.parse(body) as { payload?: typeof payload }).payload;
  } catch {
    unparsable++;
    return;
  }
  if (!payload || typeof payload.phase !== "string") {
    unparsable++;
    return;
  }
  const state = phaseState(payload.phase);
  state.requests++;
  const fan = /^\/fan\/(\d+)$/.exec(path);
  const wh = fan ? Number(fan[1]) : payload.wh;
  if (typeof wh !== "number" || typeof payload.seq !== "number") return;
  // Sent to another webhook's URL: not a delivery of this one (it counts as lost).
  const target = /^\/hook\/(\d+)$/.exec(path);
  if (target && Number(target[1]) !== wh) return;
  let hook = state.perWebhook.get(wh);
  if (!hook) {
    hook = { seen: new Set(), max: 0 };
    state.perWebhook.set(wh, hook);
  }
  if (hook.seen.has(payload.seq)) {
    state.duplicates++;
    return;
  }
  hook.seen.add(payload.seq);
  if (payload.seq < hook.max) state.orderViolations++;
  else hook.max = payload.seq;
  if (state.firstAt === 0) state.firstAt = at;
  state.lastAt = at;
  if (typeof payload.sent_at === "number") state.latencies.push(at - payload.sent_at);
}

function report(name: string, withDetail: boolean): PhaseReport {
  const state = phaseState(name);
  let unique = 0;
  for (const hook of state.perWebhook.values()) unique += hook.seen.size;
  const result: PhaseReport = {
    phase: name,
    requests: state.requests,
    unique,
    duplicates: state.duplicates,
    orderViolations: state.orderViolations,
    firstAt: state.firstAt,
    lastAt: state.lastAt,
  };
  if (withDetail) {
    result.latencies = state.latencies;
    result.seqs = Object.fromEntries([...state.perWebhook].map(([wh, hook]) => [String(wh), [...hook.seen]]));
  }
  return result;
}

/** Listens on `argv[2]` ports (default 1): each port is an origin of its own for the dispatcher's sender. */
const portCount = Math.max(1, Number(process.argv[2] ?? 1) || 1);
const servers: http.Server[] = [];

function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("end", () => {
    const at = now();
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end("ok");
    record(Buffer.concat(chunks).toString("utf8"), at, req.url ?? "");
  });
  req.on("error", () => res.destroy());
}

void Promise.all(
  Array.from(
    { length: portCount },
    () =>
      new Promise<number>((resolve, reject) => {
        const server = http.createServer({ keepAlive: true, keepAliveInitialDelay: 1_000 }, handler);
        server.keepAliveTimeout = 120_000;
        server.headersTimeout = 130_000;
        server.requestTimeout = 0;
        server.maxRequestsPerSocket = 0;
        servers.push(server);
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
      }),
  ),
).then(
  (ports) => process.send?.({ type: "listening", ports }),
  (err: Error) => {
    console.error(`receiver: ${err.message}`);
    process.exit(1);
  },
);

process.on("message", (msg: { type: string; id?: number; phase?: string; detail?: boolean }) => {
  if (msg.type === "stats") {
    process.send?.({ type: "stats", id: msg.id, unparsable, ...report(msg.phase ?? "", msg.detail === true) });
  } else if (msg.type === "stop") {
    for (const server of servers) {
      server.closeAllConnections();
      server.close();
    }
    setImmediate(() => process.exit(0));
    setTimeout(() => process.exit(0), 1_000).unref();
  }
});
// The parent going away (killed, crashed) takes the receiver with it.
process.on("disconnect", () => process.exit(0));
