// The embedded database's lock: one process per data dir, and nothing left by a crash keeps a new start out.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { DataDirInUseError, lockDataDir } from "../../src/store/data-dir-lock.js";

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true });
});

async function dataDir(name = "d"): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-lock-"));
  dirs.push(dir);
  const sub = path.join(dir, name);
  await fs.mkdir(sub, { recursive: true });
  return sub;
}

test("a second holder is refused while the first holds the lock, and let in once it is released", async () => {
  const dir = await dataDir();
  const first = await lockDataDir(dir);
  await assert.rejects(lockDataDir(dir), (err: Error) => err instanceof DataDirInUseError && err.message.includes(dir) && /DATABASE_URL/.test(err.message));
  await first.release();
  const second = await lockDataDir(dir);
  await second.release();
});

test("a lock left by a process killed with SIGKILL does not keep the next start out", async () => {
  const dir = await dataDir();
  // Another process takes the lock and dies without releasing it: its socket file stays behind.
  const child = spawn(process.execPath, ["-e", "require('net').createServer().listen(process.argv[1], () => console.log('held'))", path.join(dir, "webhookd.lock")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
  await assert.rejects(lockDataDir(dir), DataDirInUseError, "held while that process lives");
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
  await fs.access(path.join(dir, "webhookd.lock"));
  const lock = await lockDataDir(dir);
  await lock.release();
});

test("a data dir whose path is too long for a socket is locked all the same", async () => {
  const dir = await dataDir("x".repeat(120));
  const first = await lockDataDir(dir);
  await assert.rejects(lockDataDir(dir), DataDirInUseError);
  await first.release();
  const again = await lockDataDir(dir);
  await again.release();
});

test("where no socket can be made in the data dir, the lock is taken in the temp dir, for that data dir", async () => {
  const dir = await dataDir();
  // Something that is not a socket sits where the lock would go (as on a file system without sockets).
  await fs.mkdir(path.join(dir, "webhookd.lock"));
  const first = await lockDataDir(dir);
  await assert.rejects(lockDataDir(dir), DataDirInUseError);
  const other = await lockDataDir(await dataDir());
  await other.release();
  await first.release();
});

/** A data dir whose lock socket was left by a process killed with SIGKILL. */
async function staleLockDir(): Promise<string> {
  const dir = await dataDir();
  const child = spawn(process.execPath, ["-e", "require('net').createServer().listen(process.argv[1], () => console.log('held'))", path.join(dir, "webhookd.lock")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
  return dir;
}

test("two starts at once on a data dir with a stale lock: one gets it, the other is refused as in use", async () => {
  // Each cleared the dead socket and bound its own, or cleared the other's fresh one: both held it.
  for (let round = 0; round < 10; round++) {
    const dir = await staleLockDir();
    const results = await Promise.allSettled([lockDataDir(dir), lockDataDir(dir)]);
    const held = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    for (const r of results) if (r.status === "rejected") assert.ok(r.reason instanceof DataDirInUseError, `refused as in use, not: ${r.reason}`);
    for (const lock of held) await lock.release();
    assert.equal(held.length, 1, `round ${round}: ${held.length} holders of one data dir`);
  }
});

test("two processes starting at once on a data dir with a stale lock: one holds it", async () => {
  const lockModule = path.resolve("src/store/data-dir-lock.ts");
  for (let round = 0; round < 3; round++) {
    const dir = await staleLockDir();
    const at = Date.now() + 1_500;
    const script = `
      const { lockDataDir } = await import(${JSON.stringify(lockModule)});
      await new Promise((r) => setTimeout(r, ${at} - Date.now()));
      try { await lockDataDir(${JSON.stringify(dir)}); console.log("HELD"); } catch (e) { console.log("REFUSED " + e.constructor.name); }
      setTimeout(() => {}, 1000);`;
    const outs = await Promise.all(
      [0, 1].map(
        () =>
          new Promise<string>((resolve) => {
            const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
            let out = "";
            child.stdout!.on("data", (d) => (out += d));
            child.once("exit", () => resolve(out.trim()));
          }),
      ),
    );
    assert.deepEqual([...outs].sort(), ["HELD", "REFUSED DataDirInUseError"], `round ${round}`);
  }
});
