import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { deleteStream } from "../../src/queue/jetstream.js";
import { freePort } from "./ports.js";
import { serverProcess } from "./server-process.js";

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
export async function startNatsServer(
  options: { started?: boolean; jetstream?: boolean; args?: string[] } = {},
): Promise<{ url: string; start(): Promise<void>; kill(): Promise<void>; stop(): Promise<void> }> {
  const port = await freePort();
  const storeDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-nats-"));
  const jetstream = (options.jetstream ?? true) ? ["-js", "-sd", storeDir] : [];
  const args = ["-a", "127.0.0.1", "-p", String(port), ...jetstream, ...(options.args ?? [])];
  const server = serverProcess("nats-server", process.env.TEST_NATS_SERVER ?? "/usr/sbin/nats-server", args, {
    ready: /Server is ready/,
    timeoutMs: 10_000,
  });
  const start = () => server.start();
  const kill = () => server.end("SIGKILL");
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
