import { StringDecoder } from "node:string_decoder";
import { Agent, errors as undiciErrors, type Dispatcher } from "undici";
import type { AddressPolicy } from "../core/address-policy.js";
import { buildDeliveryBody, buildDeliveryHeaders } from "../core/signing.js";
import { checkHostBeforeConnect, createGuardedLookup } from "./guarded-lookup.js";

const MAX_TIMER_MS = 2 ** 31 - 1;
/** How often the guards of requests waiting for a socket are refreshed, and after how long a wait. */
const GUARD_REFRESH_MS = 1_000;
/**
 * A request that waited longer than this for its socket is withdrawn, to be sent again freshly signed.
 * Its webhook-timestamp was taken before the wait (undici writes the headers given to dispatch), and
 * receivers refuse timestamps more than 5 minutes old, which a wait within a long
 * WEBHOOKD_DELIVERY_TIMEOUT reached; a secret past its grace would also have signed it.
 */
const FRESH_SIGNATURE_MS = 60_000;

/** What one HTTP attempt produced, before any policy decides what it means. */
export type SendResult =
  | { kind: "response"; status: number; body: string; retryAfter: string | undefined; durationMs: number }
  | { kind: "error"; error: string; blocked: boolean; durationMs: number };

/**
 * A send's end: an attempt's result, or nothing sent because, when the socket came, the guard said no or
 * the signature had grown stale waiting for it.
 */
export type SendOutcome = SendResult | { kind: "withdrawn"; durationMs: number };

/**
 * What a request asks when its socket comes. A request waits for one behind the origin's socket cap
 * (another webhook's slow endpoint on the same host can hold them all) for up to the delivery timeout;
 * checked only before that wait, it went out seconds after its webhook was deleted or paused, or after
 * the shard's lease had lapsed.
 */
export interface SendGuard {
  /** Synchronous, on the socket's turn: may the request still go? */
  mayGo(): boolean;
  /** Called about once a second while the request waits for a socket, to bring what `mayGo` reads up to date. */
  refresh(): void;
}

export interface SendRequest {
  url: string;
  /** whsec_ secrets for v1, whsk_ keys for v1a. */
  secrets: string[];
  scheme: "v1" | "v1a";
  eventId: string;
  eventType: string;
  createdAt: number;
  payload: string;
  guard?: SendGuard;
}

export interface SenderOptions {
  addressPolicy: AddressPolicy;
  /**
   * WEBHOOKD_ALLOW_HTTP, applied to every attempt, not only at registration: a webhook registered while
   * it was on went on getting signed payloads in plain text after the operator turned it off.
   */
  allowHttp: boolean;
  timeoutMs: number;
  /** Sockets per origin (WEBHOOKD_CONNECTIONS_PER_ORIGIN): a hanging endpoint holds at most this many. */
  connectionsPerOrigin?: number;
  /** Injected by tests to answer DNS for made-up names. */
  resolve?: (hostname: string) => Promise<{ address: string; family: number }[]>;
  /** The whole trust store (PEM), when it differs from Node's default. */
  ca?: string[];
  /** Set by tests: after how long a wait for a socket a request is withdrawn to be signed again. */
  freshSignatureMs?: number;
}

/** Kept as evidence in the attempt log; the rest of a response is read and dropped. */
export const RESPONSE_BODY_KEEP = 4096;
/** Past this a response is cut off, and its socket with it. */
const RESPONSE_BODY_READ_MAX = 64 * 1024;

export interface Sender {
  send(request: SendRequest): Promise<SendOutcome>;
  close(): Promise<void>;
}

export function createSender(options: SenderOptions): Sender {
  const agent = new Agent({
    connections: options.connectionsPerOrigin ?? 16,
    keepAliveTimeout: 30_000,
    connect: {
      // Every new socket resolves through the policy check and connects to the address it checked.
      lookup: createGuardedLookup(options.addressPolicy, options.resolve),
      timeout: Math.min(options.timeoutMs, 10_000),
      minVersion: "TLSv1.2",
      ...(options.ca ? { ca: options.ca } : {}),
    },
  });

  const freshSignatureMs = options.freshSignatureMs ?? FRESH_SIGNATURE_MS;
  /** Requests waiting for a socket, whose guards are refreshed while they wait. */
  const waiting = new Set<Attempt>();
  const refresher = setInterval(() => {
    const now = performance.now();
    for (const attempt of waiting) if (now - attempt.started >= GUARD_REFRESH_MS) attempt.guard?.refresh();
  }, GUARD_REFRESH_MS);
  refresher.unref();

  async function send(request: SendRequest): Promise<SendOutcome> {
    const started = performance.now();
    // Encoded once: signed and written as these bytes (a string was encoded twice, for the HMAC and the socket).
    const body = Buffer.from(
      buildDeliveryBody({
        eventId: request.eventId,
        eventType: request.eventType,
        timestamp: new Date(request.createdAt),
        payloadJson: request.payload,
      }),
      "utf8",
    );
    const headers = buildDeliveryHeaders({
      id: request.eventId,
      timestamp: Math.floor(Date.now() / 1000),
      body,
      secrets: request.secrets,
      scheme: request.scheme,
    });
    let target: Target;
    try {
      target = targetOf(request.url);
    } catch (err) {
      return { kind: "error", error: describe(err), blocked: isBlocked(err), durationMs: Math.round(performance.now() - started) };
    }
    return new Promise<SendOutcome>((resolve) => {
      const attempt = new Attempt(started, options.timeoutMs, freshSignatureMs, resolve, request.guard, request.guard ? waiting : undefined);
      // The handler API rather than request(): the response body arrives as chunks, without a stream and
      // its async iteration per attempt. Redirects are not followed (no interceptor).
      agent.dispatch({ origin: target.origin, path: target.path, method: "POST", headers: { ...headers, "user-agent": "webhookd/0.1" }, body }, attempt);
    });
  }

  /**
   * Parsed and checked once per URL: every attempt of a webhook posts to the same one, and the verdict on
   * an IP literal cannot change (a refused one is not kept, so it is refused again each time).
   */
  const targets = new Map<string, Target>();
  function targetOf(url: string): Target {
    let target = targets.get(url);
    if (!target) {
      const parsed = new URL(url);
      if (parsed.protocol !== "https:" && !(parsed.protocol === "http:" && options.allowHttp)) {
        throw Object.assign(new Error(`blocked: ${parsed.protocol}// URLs are not allowed${parsed.protocol === "http:" ? " (WEBHOOKD_ALLOW_HTTP is off)" : ""}`), { code: "EBLOCKED" });
      }
      // Node never calls the lookup hook for an IP literal, so literals are checked here.
      checkHostBeforeConnect(parsed, options.addressPolicy);
      target = { origin: parsed.origin, path: `${parsed.pathname}${parsed.search}` };
      if (targets.size >= 10_000) targets.clear();
      targets.set(url, target);
    }
    return target;
  }

  return {
    send,
    close: () => {
      clearInterval(refresher);
      return agent.close();
    },
  };
}

interface Target {
  origin: string;
  path: string;
}

/**
 * One attempt as undici's dispatch handler: keeps the first 4 KB of the response, cuts the connection
 * past 64 KB, and ends the attempt at one deadline for all of it, queueing behind the per-origin socket
 * cap and connecting included (undici's bodyTimeout restarts on every chunk). A plain timer rather than
 * an AbortSignal, and a class rather than closures: per attempt, the signal's machinery measured 13 µs
 * of CPU, 40 % of a bare keep-alive POST.
 */
class Attempt implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined;
  private done = false;
  private status = 0;
  private retryAfter: string | undefined;
  private readonly kept: Buffer[] = [];
  private keptBytes = 0;
  private readBytes = 0;
  private readonly deadline: NodeJS.Timeout;

  constructor(
    readonly started: number,
    private readonly timeoutMs: number,
    private readonly freshSignatureMs: number,
    private readonly resolve: (result: SendOutcome) => void,
    readonly guard?: SendGuard,
    private readonly waiting?: Set<Attempt>,
  ) {
    // Node runs a delay past 2^31-1 ms after 1 ms, which would end every attempt at once; the
    // configuration caps the timeout at an hour, this keeps any other caller safe too.
    this.deadline = setTimeout(() => this.timedOut(), Math.min(timeoutMs, MAX_TIMER_MS));
    waiting?.add(this);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    this.waiting?.delete(this);
    // Its socket came after the deadline had ended the attempt.
    if (this.done) controller.abort(new Error("attempt timed out"));
    else if ((this.guard && !this.guard.mayGo()) || performance.now() - this.started > this.freshSignatureMs) {
      this.finish({ kind: "withdrawn", durationMs: this.elapsed() });
      controller.abort(new Error("withdrawn before it was sent"));
    }
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    this.status = statusCode;
    const value = headers["retry-after"];
    this.retryAfter = Array.isArray(value) ? value[0] : value;
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.readBytes += chunk.length;
    if (this.keptBytes < RESPONSE_BODY_KEEP) {
      const slice = chunk.subarray(0, RESPONSE_BODY_KEEP - this.keptBytes);
      this.kept.push(slice);
      this.keptBytes += slice.length;
    }
    if (this.readBytes > RESPONSE_BODY_READ_MAX) {
      this.finish(this.response());
      controller.abort(new Error("response body over the read limit"));
    }
  }

  onResponseEnd(): void {
    this.finish(this.response());
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, err: Error): void {
    this.finish({ kind: "error", error: describe(err), blocked: isBlocked(err), durationMs: this.elapsed() });
  }

  private timedOut(): void {
    this.finish({ kind: "error", error: `timed out after ${this.timeoutMs} ms`, blocked: false, durationMs: this.elapsed() });
    this.controller?.abort(new Error("attempt timed out"));
  }

  private response(): SendResult {
    return { kind: "response", status: this.status, body: keptText(this.kept), retryAfter: this.retryAfter, durationMs: this.elapsed() };
  }

  private elapsed(): number {
    return Math.round(performance.now() - this.started);
  }

  private finish(result: SendOutcome): void {
    if (this.done) return;
    this.done = true;
    this.waiting?.delete(this);
    clearTimeout(this.deadline);
    this.resolve(result);
  }
}

/**
 * Whole characters only (the cut never leaves half of one behind), and no NUL: Postgres text cannot
 * hold it, and an attempt that cannot be recorded would hold up every attempt batched with it.
 */
function keptText(kept: Buffer[]): string {
  if (kept.length === 0) return "";
  const bytes = kept.length === 1 ? kept[0]! : Buffer.concat(kept);
  return new StringDecoder("utf8").write(bytes).replace(/\u0000/g, "");
}

function isBlocked(err: unknown): boolean {
  return findCode(err) === "EBLOCKED";
}

function findCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: string }).code;
    if (code === "EBLOCKED") return code;
  }
  return (err as { code?: string })?.code;
}

function describe(err: unknown): string {
  if (err instanceof undiciErrors.ConnectTimeoutError) return "connect timeout";
  const messages: string[] = [];
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const message = (e as Error).message;
    const code = (e as { code?: string }).code;
    if (message) messages.push(code && !message.includes(code) ? `${code}: ${message}` : message);
  }
  return [...new Set(messages)].join(": ").slice(0, 500) || "request failed";
}

