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

/**
 * The webhookd processes of one scenario, each the real binary started with `env` as an operator would.
 * `killAll` ends every one still running: SIGKILL in a cleanup after a failure, SIGTERM at a clean end.
 */
export function webhookdProcesses(env: Record<string, string>) {
  const running: Spawned[] = [];
  const start = (role: "api" | "dispatcher", extra: Record<string, string>) => {
    const proc = spawnBin("webhookd", [role], { ...env, ...extra });
    running.push(proc);
    return proc;
  };
  return {
    /** An API on a free port, once it listens; `extra` overrides the scenario's env for it alone. */
    async api(extra: Record<string, string> = {}) {
      const proc = start("api", { WEBHOOKD_LISTEN: "127.0.0.1:0", ...extra });
      return { proc, url: (await proc.waitFor(/webhookd listening on (http:\/\/\S+)/))[1]! };
    },
    /** A dispatcher, once it has started, and its id. */
    async dispatcher() {
      const proc = start("dispatcher", {});
      return { proc, id: (await proc.waitFor(/"dispatcher":"(dsp_[^"]+)"[^\n]*dispatcher started/))[1]! };
    },
    async killAll(signal: NodeJS.Signals): Promise<void> {
      for (const proc of running.splice(0)) await proc.kill(signal);
    },
  };
}
