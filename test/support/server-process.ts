import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";

/**
 * A server the test runs itself (Postgres, NATS), to start and end as often as it likes on the same
 * port and files: `start()` spawns it and resolves when its output shows `ready` (or fails with that
 * output); `end(signal)` sends the signal and resolves once it has exited. Ending one not running does
 * nothing.
 */
export function serverProcess(
  name: string,
  command: string,
  args: string[],
  options: { ready: RegExp; timeoutMs: number; spawn?: SpawnOptions },
): { start(): Promise<void>; end(signal: NodeJS.Signals): Promise<void> } {
  let server: ChildProcess | undefined;
  return {
    async start() {
      const child = spawn(command, args, { ...options.spawn, stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
      child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
      const deadline = Date.now() + options.timeoutMs;
      while (!options.ready.test(output)) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${name} did not start:\n${output}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      server = child;
    },
    async end(signal) {
      const child = server;
      server = undefined;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill(signal);
      await exited;
    },
  };
}
