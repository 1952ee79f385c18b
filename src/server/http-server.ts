import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { Code, ConnectError, cors } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Services } from "./services.js";
import { connectRoutes } from "./connect-routes.js";
import { createRestRouter, MAX_REST_BODY_BYTES } from "./rest-routes.js";
import { registry } from "../metrics.js";
import { toConnectError } from "./errors.js";
import { fromBinary, type DescMessage } from "@bufbuild/protobuf";
import { AdminService } from "../../gen/webhook/v1/admin_pb.js";
import { DeliveryService } from "../../gen/webhook/v1/delivery_pb.js";
import { EventService } from "../../gen/webhook/v1/event_pb.js";
import { WebhookService } from "../../gen/webhook/v1/webhook_pb.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

export interface ApiServerOptions {
  services: Services;
  /** For /readyz: each check resolves true when its dependency answers. */
  readiness: Record<string, () => Promise<boolean>>;
}

const READ_MAX_BYTES = 100 * MAX_REST_BODY_BYTES;

const CORS_HEADERS = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": [...cors.allowedMethods, "PUT", "DELETE"].join(", "),
  "access-control-allow-headers": [...cors.allowedHeaders, "Authorization", "X-Tenant-Id"].join(", "),
  "access-control-expose-headers": cors.exposedHeaders.join(", "),
  "access-control-max-age": "7200",
};

/** One request handler for every door: REST, health and metrics by path, the rest to Connect. */
export function createApiHandler(options: ApiServerOptions) {
  const ops = opsRoutes(options.readiness);
  const rest = createRestRouter(options.services);
  const connect = connectNodeAdapter({
    routes: connectRoutes(options.services),
    interceptors: [
      (next) => async (req) => {
        try {
          return await next(req);
        } catch (err) {
          const mapped = toConnectError(err);
          if (!(err instanceof ConnectError) && mapped.code === Code.Unknown) {
            // An unexpected failure: logged in full here, never described to the caller.
            console.error(err);
            throw new ConnectError("internal error", Code.Internal);
          }
          throw mapped;
        }
      },
    ],
    // Batches of maximal events fit; a larger body is refused before it is read whole.
    readMaxBytes: READ_MAX_BYTES,
    // As REST does, and as the protobuf JSON mapping asks: an unknown field (a misplaced idempotency key)
    // is refused, not dropped. Connect's default dropped it, and the "idempotent" retry made a second event.
    jsonOptions: { ignoreUnknownFields: false },
  });

  return async function handle(req: Request, res: Response): Promise<void> {
    for (const [name, value] of Object.entries(CORS_HEADERS)) res.setHeader(name, value);
    if (req.method === "OPTIONS") {
      res.writeHead(204);
      res.end();
      return;
    }
    try {
      if (await ops(req, res)) return;
      if (await rest(req, res)) return;
      if (!(await checkBinaryUnaryBody(req, res))) return;
      (connect as (req: Request, res: Response) => void)(req, res);
    } catch (err) {
      console.error(err);
      if (!res.headersSent) json(res, 500, { error: { code: "internal", message: "internal error" } });
    }
  };
}

/** /healthz, /readyz and /metrics; true when the request was one of them (and is answered). */
function opsRoutes(readiness: ApiServerOptions["readiness"]) {
  return async (req: Request, res: Response): Promise<boolean> => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/healthz") {
      json(res, 200, { status: "ok" });
      return true;
    }
    if (path === "/readyz") {
      const checks: Record<string, boolean> = {};
      for (const [name, check] of Object.entries(readiness)) checks[name] = await check().catch(() => false);
      const ready = Object.values(checks).every(Boolean);
      json(res, ready ? 200 : 503, { status: ready ? "ready" : "not ready", checks });
      return true;
    }
    if (path === "/metrics") {
      const body = await registry.metrics();
      res.writeHead(200, { "content-type": registry.contentType });
      res.end(body);
      return true;
    }
    return false;
  };
}

/**
 * Health, readiness and metrics alone (WEBHOOKD_METRICS_LISTEN): what a dispatcher process, which has no
 * API, is watched and scraped through. Without it, a deployment of separate api and dispatcher processes
 * showed its delivery metrics nowhere (the api's read zero).
 */
export function createOpsHandler(readiness: ApiServerOptions["readiness"]) {
  const ops = opsRoutes(readiness);
  return async function handle(req: Request, res: Response): Promise<void> {
    try {
      if (!(await ops(req, res))) json(res, 404, { error: { code: "not_found", message: "only /healthz, /readyz and /metrics are served here" } });
    } catch (err) {
      console.error(err);
      if (!res.headersSent) json(res, 500, { error: { code: "internal", message: "internal error" } });
    }
  };
}

/** Request message types of the unary RPCs, by path. */
const UNARY_INPUTS = new Map<string, DescMessage>(
  [WebhookService, EventService, DeliveryService, AdminService].flatMap((service) =>
    service.methods.filter((m) => m.methodKind === "unary").map((m) => [`/${service.typeName}/${m.name}`, m.input] as const),
  ),
);

/**
 * connect-es answers a binary request body that does not parse with `internal` (HTTP 500), the gRPC
 * convention; for a Connect unary call that is the client's mistake, so it is checked here first and
 * answered invalid_argument. The body, read once, is handed on to the Connect handler.
 */
async function checkBinaryUnaryBody(req: Request, res: Response): Promise<boolean> {
  const input = req.method === "POST" ? UNARY_INPUTS.get((req.url ?? "").split("?")[0]!) : undefined;
  const type = String(req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
  if (!input || type !== "application/proto" || req.headers["content-encoding"]) return true;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > READ_MAX_BYTES) {
      json(res, 413, { code: "resource_exhausted", message: `request body is larger than ${READ_MAX_BYTES} bytes` });
      return false;
    }
    chunks.push(chunk);
  }
  const body = Buffer.concat(chunks);
  try {
    fromBinary(input, body);
  } catch (err) {
    json(res, 400, { code: "invalid_argument", message: `request body is not a valid ${input.typeName}: ${(err as Error).message}` });
    return false;
  }
  Object.defineProperty(req, Symbol.asyncIterator, {
    value: async function* () {
      yield body;
    },
  });
  return true;
}

function json(res: Response, status: number, body: unknown): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(payload) });
  res.end(payload);
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface ApiServer {
  address: { host: string; port: number };
  close(): Promise<void>;
}

/** How long a stop waits for the requests the API has begun to be answered. */
const DRAIN_MS = 20_000;
/** How long a stop waits for the bodies of requests still arriving; nothing has begun for them. */
const BODY_WAIT_MS = 2_000;

interface InFlight {
  req: Request;
  res: Response;
}

/**
 * Whether the client has sent the whole request. An HTTP/2 request without a body ends with its headers;
 * Node's `complete` there waits for the handler to read the body, which a GET never does.
 */
function received(req: Request): boolean {
  return req instanceof http.IncomingMessage ? req.complete : req.stream.endAfterHeaders || req.complete;
}

/**
 * HTTP/1.1 and cleartext HTTP/2 (h2c, what gRPC clients speak without TLS) on one port: the first bytes
 * of a connection tell which, and the socket goes to the matching server.
 *
 * Closing stops taking connections, closes idle ones (HTTP/1.1 keep-alive sockets at once, and the others
 * when their last answer is out; HTTP/2 sessions are told GOAWAY), so that clients go elsewhere rather than
 * meet the 503 a request gets after the stop. After 2 s it cuts connections whose requests in flight
 * have not all arrived (nothing has begun for them; a stalled upload held every stop for the whole wait),
 * then waits up to DRAIN_MS for the rest to be answered before it cuts every connection: cut after 2 s,
 * a publish waiting on Postgres went on to commit, unanswered, and the producer's retry made a second
 * event. Pipelined HTTP/1.1 requests are answered in turn on their socket; none is marked to close it.
 */
export async function listen(handler: (req: Request, res: Response) => Promise<void>, host: string, port: number): Promise<ApiServer> {
  const inFlight = new Set<InFlight>();
  /** HTTP/1.1 sockets, with their requests in flight (pipelined ones queue behind the first). */
  const h1Sockets = new Map<net.Socket, Set<InFlight>>();
  let closing = false;
  let cutting = false;
  let drained: (() => void) | undefined;
  const settled = (entry: InFlight) => {
    if (!inFlight.delete(entry)) return;
    if (inFlight.size === 0) drained?.();
  };
  /** Past the body wait: a connection whose requests in flight have not all arrived goes. */
  const cutStalled = () => {
    for (const [socket, requests] of h1Sockets) {
      if (requests.size > 0 && [...requests].every(({ req }) => !received(req))) socket.destroy();
    }
    for (const { req } of inFlight) {
      if (!(req instanceof http.IncomingMessage) && !received(req)) req.stream.close(http2.constants.NGHTTP2_CANCEL);
    }
  };
  const track = (req: Request, res: Response) => {
    if (closing) {
      // Begun after the stop: answered at once, and the connection is not kept.
      if (res instanceof http.ServerResponse) res.setHeader("connection", "close");
      json(res, 503, { error: { code: "unavailable", message: "the server is shutting down" } });
      return;
    }
    const entry = { req, res };
    inFlight.add(entry);
    const socketRequests = res instanceof http.ServerResponse ? h1Sockets.get(req.socket) : undefined;
    socketRequests?.add(entry);
    res.once("close", () => {
      settled(entry);
      if (!socketRequests) return;
      socketRequests.delete(entry);
      if (!closing) return;
      if (socketRequests.size === 0) req.socket.end();
      else if (cutting) cutStalled();
    });
    void handler(req, res);
  };
  const h1 = http.createServer(track);
  const h2 = http2.createServer({}, track);
  h1.keepAliveTimeout = 65_000;
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      // A pipelined request whose answer never got its turn ends with its socket.
      for (const entry of h1Sockets.get(socket) ?? []) settled(entry);
      h1Sockets.delete(socket);
    });
    socket.once("readable", function route() {
      const head: Buffer | null = socket.read(H2_PREFACE.length) ?? socket.read();
      if (head === null) {
        socket.once("readable", route);
        return;
      }
      socket.unshift(head);
      const isH2 = head.length >= 3 && H2_PREFACE.subarray(0, Math.min(head.length, H2_PREFACE.length)).equals(head.subarray(0, Math.min(head.length, H2_PREFACE.length)));
      if (!isH2) h1Sockets.set(socket, new Set());
      (isH2 ? h2 : h1).emit("connection", socket);
    });
    socket.on("error", () => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as net.AddressInfo;
  /** Resolves when every request in flight is answered, or after `ms`. */
  const drain = (ms: number) =>
    inFlight.size === 0
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, ms).unref();
        });
  return {
    address: { host: address.address, port: address.port },
    async close() {
      closing = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const [socket, requests] of h1Sockets) if (requests.size === 0) socket.end();
      // HTTP/2 clients are told to open no more streams (GOAWAY); the ones open finish.
      for (const session of sessions) session.close();
      await drain(BODY_WAIT_MS);
      cutting = true;
      cutStalled();
      await drain(DRAIN_MS);
      for (const socket of sockets) socket.destroy();
      await stopped;
    },
  };
}
