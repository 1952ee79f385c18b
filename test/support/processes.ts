import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export interface Spawned {
  child: ChildProcess;
  output: () => string;
  /** Resolves with the first match of `pattern` in the output. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Runs a real binary (bin/webhookd.js, bin/webhookctl.js) as its users would. */
export function spawnBin(bin: "webhookd" | "webhookctl", args: string[], env: Record<string, string>): Spawned {
  const child = spawn(process.execPath, [path.join(ROOT, "bin", `${bin}.js`), ...args], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "/tmp",
      WEBHOOKD_LOG_LEVEL: "warn",
      // The same key as startTestApp's, so in-process apps and binaries of one test read each other's secrets.
      WEBHOOKD_ENCRYPTION_KEY: Buffer.alloc(32, 7).toString("base64"),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    output: () => out,
    async waitFor(pattern, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const match = out.match(pattern);
        if (match) return match;
        if (child.exitCode !== null) throw new Error(`${bin} exited (${child.exitCode}) before printing ${pattern}:\n${out}`);
        if (Date.now() > deadline) throw new Error(`${bin} did not print ${pattern} within ${timeoutMs} ms:\n${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async kill(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Runs a binary to completion. */
export async function runBin(bin: "webhookd" | "webhookctl", args: string[], env: Record<string, string>) {
  const p = spawnBin(bin, args, env);
  const code = await new Promise<number | null>((resolve) => p.child.once("exit", (c) => resolve(c)));
  return { code, output: p.output() };
}
