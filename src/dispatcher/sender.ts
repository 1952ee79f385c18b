import { StringDecoder } from "node:string_decoder";
import { Agent, errors as undiciErrors } from "undici";
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
    let url: URL;
    try {
      url = new URL(request.url);
      // Node never calls the lookup hook for an IP literal, so literals are checked here.
      checkHostBeforeConnect(url, options.addressPolicy);
    } catch (err) {
      return { kind: "error", error: describe(err), blocked: isBlocked(err), durationMs: elapsed() };
    }
    const signal = AbortSignal.timeout(options.timeoutMs);
    try {
      // One deadline for the whole attempt: undici's bodyTimeout restarts on every chunk.
      const response = await agent.request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method: "POST",
        headers: { ...headers, "user-agent": "webhookd/0.1" },
        body,
        signal,
      });
      const text = await readCapped(response.body);
      const retryAfter = response.headers["retry-after"];
      return {
        kind: "response",
        status: response.statusCode,
        body: text,
        retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter,
        durationMs: elapsed(),
      };
    } catch (err) {
      if (signal.aborted) {
        return { kind: "error", error: `timed out after ${options.timeoutMs} ms`, blocked: false, durationMs: elapsed() };
      }
      return { kind: "error", error: describe(err), blocked: isBlocked(err), durationMs: elapsed() };
    }
  }

  return { send, close: () => agent.close() };
}

async function readCapped(body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown }): Promise<string> {
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let readBytes = 0;
  for await (const chunk of body) {
    readBytes += chunk.length;
    if (keptBytes < RESPONSE_BODY_KEEP) {
      const slice = chunk.subarray(0, RESPONSE_BODY_KEEP - keptBytes);
      kept.push(slice);
      keptBytes += slice.length;
    }
    if (readBytes > RESPONSE_BODY_READ_MAX) {
      body.destroy();
      break;
    }
  }
  // Whole characters only (the cut never leaves half of one behind), and no NUL: Postgres text cannot
  // hold it, and an attempt that cannot be recorded would hold up every attempt batched with it.
  return new StringDecoder("utf8").write(Buffer.concat(kept)).replace(/\u0000/g, "");
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

