import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { deleteStream } from "../../src/queue/jetstream.js";
import { freePort } from "./ports.js";
import { startTcpProxy } from "./tcp-proxy.js";

export const NATS_URL = process.env.TEST_NATS_URL ?? "nats://127.0.0.1:4222";

/** A stream and consumer prefix of the test's own; `cleanup()` deletes the stream. */
export function natsPrefix(label: string): { prefix: string; cleanup(): Promise<void> } {
  const prefix = `T${label.replace(/[^a-z0-9]/gi, "").toUpperCase()}${randomBytes(3).toString("hex").toUpperCase()}`;
  return { prefix, cleanup: () => deleteStream(NATS_URL, prefix) };
}

/**
 * A NATS server of the test's own, with JetStream, on a free port and a store directory of its own, to
 * kill (SIGKILL) and start again on the same port and store (`started: false`: not started yet). `stop()`
 * kills it and removes the store.
 */
export async function startNatsServer(options: { started?: boolean } = {}): Promise<{ url: string; start(): Promise<void>; kill(): Promise<void>; stop(): Promise<void> }> {
  const port = await freePort();
  const storeDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-nats-"));
  let server: ChildProcess | undefined;
  const start = async () => {
    const child = spawn(process.env.TEST_NATS_SERVER ?? "/usr/sbin/nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr!.on("data", (c: Buffer) => (out += c.toString()));
    const deadline = Date.now() + 10_000;
    while (!/Server is ready/.test(out)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nats-server did not start:\n${out}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    server = child;
  };
  const kill = async () => {
    const child = server;
    server = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  };
  if (options.started ?? true) await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    start,
    kill,
    async stop() {
      await kill();
      await fs.rm(storeDir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy in front of a NATS server (see startTcpProxy): with `hold()`, what the client publishes
 * from then on never reaches the server — a process that commits and dies before its publish reaches
 * NATS, made exact.
 */
export async function startNatsProxy(target = NATS_URL): Promise<{ url: string; hold(): void; close(): Promise<void> }> {
  const { hostname, port } = new URL(target);
  const proxy = await startTcpProxy(hostname, Number(port));
  return { url: `nats://127.0.0.1:${proxy.port}`, hold: proxy.hold, close: proxy.close };
}
