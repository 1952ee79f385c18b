import net from "node:net";

/**
 * A TCP proxy on a loopback port of its own in front of the server at `target` (any URL with a host and
 * port: postgres://, nats://); `url` is `target` reached through the proxy. It breaks a client's
 * connections in ways a healthy server never does:
 * - `hold()`: the client's bytes stop reaching the server while the server's still reach the client
 *   (the client stays connected, and what it sends from then on is lost);
 * - `mute()`: the server's bytes stop reaching the client on the connections open now (what the client
 *   sends still arrives: a statement commits, and its reply is lost);
 * - `cut()`: every connection open now is closed under the client, with no word from the server;
 * - `freeze()`: nothing passes either way on the connections open now, and they stay open (a server
 *   gone without a word: no reset ever comes); new connections pass;
 * - `block()`: `cut()`, and new connections are closed as soon as they come, until `unblock()` (a
 *   network partition between the client and the server).
 */
export async function startTcpProxy(target: string): Promise<{ url: string; hold(): void; mute(): void; freeze(): void; cut(): void; block(): void; unblock(): void; close(): Promise<void> }> {
  const { hostname, port } = new URL(target);
  let holding = false;
  let blocked = false;
  const muted = new WeakSet<net.Socket>();
  const upstreams = new Set<net.Socket>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => undefined);
    }
    client.on("data", (chunk) => {
      if (!holding && !muted.has(client)) upstream.write(chunk);
    });
    upstreams.add(upstream);
    upstream.on("close", () => upstreams.delete(upstream));
    upstream.on("data", (chunk) => {
      if (!muted.has(upstream)) client.write(chunk);
    });
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const cut = () => {
    for (const s of sockets) s.destroy();
  };
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String((server.address() as net.AddressInfo).port);
  return {
    url: url.toString(),
    hold() {
      holding = true;
    },
    mute() {
      for (const u of upstreams) muted.add(u);
    },
    freeze() {
      for (const socket of sockets) muted.add(socket);
    },
    cut,
    block() {
      blocked = true;
      cut();
    },
    unblock() {
      blocked = false;
    },
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
