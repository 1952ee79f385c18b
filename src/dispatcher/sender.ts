import { StringDecoder } from "node:string_decoder";
import { Agent, errors as undiciErrors, type Dispatcher } from "undici";
import type { AddressPolicy } from "../core/address-policy.js";
import { buildDeliveryBody, buildDeliveryHeaders } from "../core/signing.js";
import { checkHostBeforeConnect, createGuardedLookup } from "./guarded-lookup.js";

/** What one HTTP attempt produced, before any policy decides what it means. */
export type SendResult =
  | { kind: "response"; status: number; body: string; retryAfter: string | undefined; durationMs: number }
  | { kind: "error"; error: string; blocked: boolean; durationMs: number };

export interface SendRequest {
  url: string;
  /** whsec_ secrets for v1, whsk_ keys for v1a. */
  secrets: string[];
  scheme: "v1" | "v1a";
  eventId: string;
  eventType: string;
  createdAt: number;
  payload: string;
}

export interface SenderOptions {
  addressPolicy: AddressPolicy;
  timeoutMs: number;
  /** Sockets per origin: a hanging endpoint holds at most this many. */
  connectionsPerOrigin?: number;
  /** Injected by tests to answer DNS for made-up names. */
  resolve?: (hostname: string) => Promise<{ address: string; family: number }[]>;
  /** The whole trust store (PEM), when it differs from Node's default. */
  ca?: string[];
}

/** Kept as evidence in the attempt log; the rest of a response is read and dropped. */
export const RESPONSE_BODY_KEEP = 4096;
/** Past this a response is cut off, and its socket with it. */
const RESPONSE_BODY_READ_MAX = 64 * 1024;

export interface Sender {
  send(request: SendRequest): Promise<SendResult>;
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

  async function send(request: SendRequest): Promise<SendResult> {
    const started = performance.now();
    const elapsed = () => Math.round(performance.now() - started);
    const body = buildDeliveryBody({
      eventId: request.eventId,
      eventType: request.eventType,
      timestamp: new Date(request.createdAt),
      payloadJson: request.payload,
    });
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
      // Node never calls the lookup hook for an IP literal, so literals are checked here.
      checkHostBeforeConnect(target.url, options.addressPolicy);
    } catch (err) {
      return { kind: "error", error: describe(err), blocked: isBlocked(err), durationMs: elapsed() };
    }
    return new Promise<SendResult>((resolve) => {
      let controller: Dispatcher.DispatchController | undefined;
      let done = false;
      let status = 0;
      let retryAfter: string | undefined;
      const kept: Buffer[] = [];
      let keptBytes = 0;
      let readBytes = 0;
      const finish = (result: SendResult) => {
        if (done) return;
        done = true;
        clearTimeout(deadline);
        resolve(result);
      };
      const response = (): SendResult => ({ kind: "response", status, body: keptText(kept), retryAfter, durationMs: elapsed() });
      // One deadline for the whole attempt, queueing and connecting included (undici's bodyTimeout
      // restarts on every chunk). A plain timer, not an AbortSignal: the signal's machinery measured 13 µs
      // of CPU per attempt, 40 % of a bare keep-alive POST.
      const deadline = setTimeout(() => {
        finish({ kind: "error", error: `timed out after ${options.timeoutMs} ms`, blocked: false, durationMs: elapsed() });
        controller?.abort(new Error("attempt timed out"));
      }, options.timeoutMs);
      // The handler API rather than request(): the response body arrives as chunks here, without a stream
      // and its async iteration per attempt. Redirects are not followed (no interceptor).
      agent.dispatch(
        { origin: target.origin, path: target.path, method: "POST", headers: { ...headers, "user-agent": "webhookd/0.1" }, body },
        {
          onRequestStart(c) {
            controller = c;
            // Its socket came after the deadline had ended the attempt.
            if (done) c.abort(new Error("attempt timed out"));
          },
          onResponseStart(_c, statusCode, responseHeaders) {
            status = statusCode;
            const value = responseHeaders["retry-after"];
            retryAfter = Array.isArray(value) ? value[0] : value;
          },
          onResponseData(c, chunk) {
            readBytes += chunk.length;
            if (keptBytes < RESPONSE_BODY_KEEP) {
              const slice = chunk.subarray(0, RESPONSE_BODY_KEEP - keptBytes);
              kept.push(slice);
              keptBytes += slice.length;
            }
            if (readBytes > RESPONSE_BODY_READ_MAX) {
              finish(response());
              c.abort(new Error("response body over the read limit"));
            }
          },
          onResponseEnd() {
            finish(response());
          },
          onResponseError(_c, err) {
            finish({ kind: "error", error: describe(err), blocked: isBlocked(err), durationMs: elapsed() });
          },
        },
      );
    });
  }

  /** Parsed once per URL: every attempt of a webhook posts to the same one. */
  const targets = new Map<string, Target>();
  function targetOf(url: string): Target {
    let target = targets.get(url);
    if (!target) {
      const parsed = new URL(url);
      target = { url: parsed, origin: parsed.origin, path: `${parsed.pathname}${parsed.search}` };
      if (targets.size >= 10_000) targets.clear();
      targets.set(url, target);
    }
    return target;
  }

  return { send, close: () => agent.close() };
}

interface Target {
  url: URL;
  origin: string;
  path: string;
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

