import fs from "node:fs";
import net from "node:net";

/** Where the kernel picks the local ports of outgoing connections (Linux; elsewhere its usual start). */
function ephemeralStart(): number {
  try {
    return Number(fs.readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || 32768;
  } catch {
    return 32768;
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/**
 * A loopback port nothing listens on (just now): for a server to come, or a connection to be refused.
 * Below the ephemeral range: a client retrying a port in it, with nothing listening yet, now and then
 * gets that very port as its own and connects to itself (TCP simultaneous open), which then holds the
 * port, and the server that was to come cannot bind it (seen in CI: NATS "address already in use").
 */
export async function freePort(): Promise<number> {
  const top = ephemeralStart();
  for (let tries = 0; tries < 50; tries++) {
    const port = 10_000 + Math.floor(Math.random() * (top - 10_000));
    if (await bindable(port)) return port;
  }
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
