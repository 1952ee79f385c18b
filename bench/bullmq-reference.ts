/**
 * The yardstick, measured in the benchmark's own run: a plain BullMQ-on-Redis sender. The bench
 * process enqueues (addBulk, straight into Redis: no HTTP API in front, which favours the reference) and a
 * worker process (bench/bullmq-worker.ts) POSTs each job to the same receiver. Run beside webhookd's
 * phase 1 on the same machine minutes apart, the two rates compare where the raw ceiling alone drifts.
 */
import { fork, type ChildProcess } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { Queue } from "bullmq";
import { withTimeout } from "../src/core/timeout.js";
import type { ReferenceJob } from "./bullmq-worker.js";

export interface Reference {
  workerPid: number;
  /** Enqueues one batch in one round trip, in order. */
  enqueue(jobs: ReferenceJob[]): Promise<void>;
  /** Resolves once the worker takes no more jobs and none it took is still running. */
  pause(): Promise<void>;
  resume(): void;
  stop(): Promise<void>;
}

/** Resolves when something accepts TCP connections at the URL's host and port, within `timeoutMs`. */
export function reachable(url: string, timeoutMs = 1_000): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port || 6379) });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

export async function startReference(options: {
  root: string;
  redisUrl: string;
  queue: string;
  concurrency: number;
  connectionsPerOrigin: number;
  nodeArgs: string[];
}): Promise<Reference> {
  const redis = new URL(options.redisUrl);
  const queue = new Queue<ReferenceJob>(options.queue, { connection: { host: redis.hostname, port: Number(redis.port || 6379) } });
  // Something else listening on the port (not Redis) would keep the client retrying for ever.
  await withTimeout(queue.waitUntilReady(), 10_000).catch(async (err: Error) => {
    await queue.close().catch(() => undefined);
    throw new Error(`Redis at ${options.redisUrl} did not answer: ${err.message}`);
  });
  const worker: ChildProcess = fork(
    path.join(options.root, "bench", "bullmq-worker.ts"),
    [options.queue, options.redisUrl, String(options.concurrency), String(options.connectionsPerOrigin)],
    { cwd: options.root, execArgv: [...options.nodeArgs, "--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] },
  );
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the BullMQ worker did not start within 20 s")), 20_000);
    worker.once("exit", (code) => reject(new Error(`the BullMQ worker exited (${code}) before it was ready`)));
    worker.once("message", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  let stopping: Promise<void> | undefined;
  return {
    workerPid: worker.pid!,
    async enqueue(jobs) {
      await queue.addBulk(jobs.map((data) => ({ name: data.eventType, data })));
    },
    pause() {
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the BullMQ worker did not pause within 20 s")), 20_000);
        worker.once("message", (msg) => {
          clearTimeout(timer);
          if (msg === "paused") resolve();
          else reject(new Error(`the BullMQ worker answered ${JSON.stringify(msg)} to "pause"`));
        });
        worker.send("pause");
      });
    },
    resume() {
      worker.send("resume");
    },
    stop() {
      stopping ??= stop();
      return stopping;
    },
  };

  async function stop(): Promise<void> {
    if (worker.connected) worker.send("stop");
    await new Promise<void>((resolve) => {
      if (worker.exitCode !== null || worker.signalCode !== null) return resolve();
      const timer = setTimeout(() => worker.kill("SIGKILL"), 5_000);
      worker.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
  }
}
