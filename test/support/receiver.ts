import http from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";

export interface Received {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}

/** What the receiver answers for one request; the default is 200 at once. */
export type Behaviour = (req: Received, countForPath: number) => { status?: number; delayMs?: number; headers?: Record<string, string>; body?: string } | undefined;

/** A real HTTP endpoint on loopback that records every request it gets. */
export async function startReceiver(behaviour: Behaviour = () => undefined) {
  const received: Received[] = [];
  const perPath = new Map<string, number>();
  const waiters = new Set<() => void>();
  let current = behaviour;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const entry: Received = { path: req.url ?? "/", headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), at: Date.now() };
      const count = (perPath.get(entry.path) ?? 0) + 1;
      perPath.set(entry.path, count);
      const answer = current(entry, count) ?? {};
      const respond = () => {
        received.push(entry);
        for (const w of waiters) w();
        if (res.destroyed) return;
        res.writeHead(answer.status ?? 200, answer.headers ?? {});
        res.end(answer.body ?? "ok");
      };
      if (answer.delayMs) setTimeout(respond, answer.delayMs);
      else respond();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: (path = "/hook") => `http://127.0.0.1:${port}${path}`,
    received,
    setBehaviour(next: Behaviour) {
      current = next;
    },
    forPath: (path: string) => received.filter((r) => r.path === path),
    /** Resolves when `predicate` holds, or rejects after `timeoutMs` naming what was awaited. */
    async waitFor(predicate: () => boolean, timeoutMs = 20_000, what = "condition"): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!predicate()) {
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (received ${received.length})`);
        await new Promise<void>((resolve) => {
          const done = () => {
            waiters.delete(done);
            resolve();
          };
          waiters.add(done);
          setTimeout(done, 50);
        });
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Verifies a received delivery with the reference Standard Webhooks verifier; throws when it does not verify. */
export function verifyDelivery(entry: Received, secret: string): { event_id: string; event_type: string; timestamp: string; payload: Record<string, unknown> } {
  const headers: Record<string, string> = {
    "webhook-id": String(entry.headers["webhook-id"]),
    "webhook-timestamp": String(entry.headers["webhook-timestamp"]),
    "webhook-signature": String(entry.headers["webhook-signature"]),
  };
  return new Webhook(secret).verify(entry.body, headers) as ReturnType<typeof verifyDelivery>;
}
