import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

/** Longest Unix socket path that fits everywhere (Linux allows 107 bytes, macOS 103). */
const MAX_SOCKET_PATH = 100;

export class DataDirInUseError extends Error {}

/**
 * One process per embedded database: PGlite keeps the database's pages in its own memory, so a second
 * process on the same files corrupts them, and both would send the same lanes. The lock is a Unix socket
 * (a named pipe on Windows) the owner listens on. The kernel stops it answering when the process dies,
 * however it dies, so a crash leaves nothing a new start could take for a live owner (a pid file can,
 * once its pid is reused).
 */
export async function lockDataDir(dir: string): Promise<{ release(): Promise<void> }> {
  const named = `webhookd-${createHash("sha256").update(await fs.realpath(dir)).digest("hex").slice(0, 16)}.lock`;
  // In the data dir where a socket can be made there; else one in the temp dir, named for the data dir,
  // does the same job on this host (a path too long for a socket, a file system without sockets).
  const places =
    process.platform === "win32"
      ? [`\\\\.\\pipe\\${named}`]
      : [path.join(dir, "webhookd.lock"), path.join(os.tmpdir(), named)].filter((p) => p.length <= MAX_SOCKET_PATH);
  let failure: unknown;
  for (const socketPath of places) {
    try {
      return await lockAt(socketPath, dir);
    } catch (err) {
      if (err instanceof DataDirInUseError) throw err;
      failure = err;
    }
  }
  throw failure;
}

async function lockAt(socketPath: string, dir: string): Promise<{ release(): Promise<void> }> {
  for (let attempt = 0; ; attempt++) {
    const server = net.createServer((socket) => socket.end());
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(socketPath, () => {
          server.off("error", reject);
          resolve();
        });
      });
      // The lock must not keep a finished process alive.
      server.unref();
      return { release: () => new Promise<void>((resolve) => server.close(() => resolve())) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt > 0) throw err;
      if (await answers(socketPath)) {
        throw new DataDirInUseError(
          `the embedded database in ${dir} is in use by another webhookd process: run one \`webhookd serve\` per data dir, or set DATABASE_URL to share a Postgres`,
        );
      }
      // Left by a process that died: nobody listens on it.
      await fs.unlink(socketPath).catch(() => undefined);
    }
  }
}

function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
