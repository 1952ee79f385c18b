import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

/** Longest Unix socket path that fits everywhere (Linux allows 107 bytes, macOS 103). */
const MAX_SOCKET_PATH = 100;

export class DataDirInUseError extends Error {}
export class DataDirUnusableError extends Error {}

/**
 * Makes the data dir if need be and checks that this process may write in it, so that a path that is a
 * file, or a directory it may not write, stops the start with the setting named, not a stack trace.
 */
export async function ensureDataDir(dataDir: string): Promise<void> {
  try {
    await fs.mkdir(dataDir, { recursive: true });
    await fs.access(dataDir, fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    const why = code === "EEXIST" || code === "ENOTDIR" ? "a file is in the way of the directory" : code === "EACCES" || code === "EPERM" ? `cannot write there (${code})` : (code ?? message);
    throw new DataDirUnusableError(`WEBHOOKD_DATA_DIR ${dataDir} is not usable: ${why}`);
  }
}

/**
 * One process per embedded database: PGlite keeps the database's pages in its own memory, so a second
 * process on the same files corrupts them, and both would send the same lanes. The lock is a Unix socket
 * (a named pipe on Windows) the owner listens on. The kernel stops it answering when the process dies,
 * however it dies, so a crash leaves nothing a new start could take for a live owner (a pid file can,
 * once its pid is reused).
 *
 * A socket left by a dead process is removed before a new one is made, and two starts doing that at once
 * could each remove the other's fresh socket and both hold the lock (3 of 5 rounds of two processes
 * racing after a SIGKILL). On Linux an abstract socket, named for the data dir, comes first: binding one
 * is atomic and leaves no file, so only its holder ever clears and takes the socket in the data dir.
 */
export async function lockDataDir(dir: string): Promise<{ release(): Promise<void> }> {
  const named = `webhookd-${createHash("sha256").update(await fs.realpath(dir)).digest("hex").slice(0, 16)}.lock`;
  const gate = process.platform === "linux" ? await lockAt(`\0${named}`, dir) : undefined;
  try {
    const lock = await lockSocketFile(dir, named);
    return {
      release: async () => {
        await lock.release();
        await gate?.release();
      },
    };
  } catch (err) {
    await gate?.release();
    throw err;
  }
}

async function lockSocketFile(dir: string, named: string): Promise<{ release(): Promise<void> }> {
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
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE") throw err;
      // Taken again between clearing a dead one and binding, by a live process: in use, not a place
      // where no socket can be made (which the caller tries the next place for).
      if (await answers(socketPath)) {
        throw new DataDirInUseError(
          `the embedded database in ${dir} is in use by another webhookd process: run one \`webhookd serve\` per data dir, or set DATABASE_URL to share a Postgres`,
        );
      }
      if (attempt > 0) throw err;
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
