import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { spawnBin } from "../support/processes.js";
import { eventually } from "../support/wait.js";
import { parsePointInTime, renderReplayProgress } from "../../src/cli/progress.js";
import { main } from "../../src/cli/webhookctl.js";

// ---------------------------------------------------------------------------------------------------------
// The pure renderer and parser.

describe("renderReplayProgress", () => {
  test("draws a 30-wide bar, the counts, the rate so far and the time left", () => {
    assert.equal(
      renderReplayProgress({ total: 1000, pending: 660, succeeded: 338, failed: 2 }, 17_000),
      `[${"#".repeat(10)}${".".repeat(20)}] 340/1000 done (338 delivered, 2 failed) 20.0/s, 33s left`,
    );
    assert.equal(
      renderReplayProgress({ total: 10, pending: 7, succeeded: 3, failed: 0 }, 612),
      `[${"#".repeat(9)}${".".repeat(21)}] 3/10 done (3 delivered, 0 failed) 4.9/s, 1s left`,
    );
  });

  test("a finished replay has a full bar and no time left", () => {
    assert.equal(
      renderReplayProgress({ total: 20, pending: 0, succeeded: 19, failed: 1 }, 4_000),
      `[${"#".repeat(30)}] 20/20 done (19 delivered, 1 failed) 5.0/s`,
    );
  });

  test("nothing done yet: an empty bar, 0.0/s and no guess at the time left", () => {
    assert.equal(renderReplayProgress({ total: 50, pending: 50, succeeded: 0, failed: 0 }, 3_000), `[${".".repeat(30)}] 0/50 done (0 delivered, 0 failed) 0.0/s`);
    assert.equal(renderReplayProgress({ total: 50, pending: 50, succeeded: 0, failed: 0 }, 0), `[${".".repeat(30)}] 0/50 done (0 delivered, 0 failed) 0.0/s`);
  });

  test("an empty replay is complete, and a zero elapsed time does not divide by zero", () => {
    assert.equal(renderReplayProgress({ total: 0, pending: 0, succeeded: 0, failed: 0 }, 0), `[${"#".repeat(30)}] 0/0 done (0 delivered, 0 failed) 0.0/s`);
    const line = renderReplayProgress({ total: 10, pending: 5, succeeded: 5, failed: 0 }, 0);
    assert.doesNotMatch(line, /NaN|Infinity/);
  });

  test("time left in minutes and hours", () => {
    // 10 done in 1 s: 10/s; 1490 pending: 149 s.
    assert.match(renderReplayProgress({ total: 1500, pending: 1490, succeeded: 10, failed: 0 }, 1_000), /10\.0\/s, 2m29s left$/);
    // 1/s; 7300 s left.
    assert.match(renderReplayProgress({ total: 7301, pending: 7300, succeeded: 1, failed: 0 }, 1_000), /1\.0\/s, 2h01m left$/);
    assert.match(renderReplayProgress({ total: 61, pending: 60, succeeded: 1, failed: 0 }, 1_000), /, 1m00s left$/);
  });

  test("the bar is always 30 wide and never overfills", () => {
    for (let total = 1; total <= 40; total++) {
      for (let pending = 0; pending <= total; pending++) {
        const line = renderReplayProgress({ total, pending, succeeded: total - pending, failed: 0 }, 1_000);
        const bar = /^\[([#.]+)\] /.exec(line);
        assert.ok(bar, line);
        assert.equal(bar[1]!.length, 30, line);
        assert.match(bar[1]!, /^#*\.*$/, line);
        assert.ok(line.includes(` ${total - pending}/${total} done `), line);
      }
    }
  });
});

describe("parsePointInTime", () => {
  const now = Date.parse("2026-11-29T12:00:00Z");

  test("RFC 3339 times, with Z, an offset or fractions", () => {
    assert.equal(parsePointInTime("2026-11-29T08:00:00Z", now).toISOString(), "2026-11-29T08:00:00.000Z");
    assert.equal(parsePointInTime("2026-11-29T08:00:00+02:00", now).toISOString(), "2026-11-29T06:00:00.000Z");
    assert.equal(parsePointInTime("2026-11-29T08:00:00.250Z", now).toISOString(), "2026-11-29T08:00:00.250Z");
  });

  test("a duration ago, from the given now", () => {
    assert.equal(parsePointInTime("2h", now).toISOString(), "2026-11-29T10:00:00.000Z");
    assert.equal(parsePointInTime("90m", now).toISOString(), "2026-11-29T10:30:00.000Z");
    assert.equal(parsePointInTime("3d", now).toISOString(), "2026-11-26T12:00:00.000Z");
    assert.equal(parsePointInTime("30s", now).getTime(), now - 30_000);
    assert.equal(parsePointInTime("500ms", now).getTime(), now - 500);
  });

  test("anything else is refused with a message naming the value and both forms", () => {
    for (const bad of ["banana", "", "2h ago", "-2h", "2", "2026-11-29", "yesterday", "h"]) {
      assert.throws(
        () => parsePointInTime(bad, now),
        (err: Error) => err.message.includes(JSON.stringify(bad)) && /RFC 3339/.test(err.message) && /duration/.test(err.message),
        JSON.stringify(bad),
      );
    }
    for (const bad of ["2026-13-45T99:00:00Z", "2026-11-29Tnoon"]) {
      assert.throws(() => parsePointInTime(bad, now), /is not a valid RFC 3339 time/, bad);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// The real binary against a running app.

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: ReturnType<typeof restClient>;
let env: Record<string, string>;
let sqlClient: pg.Client;
const failing = new Set<string>();

before(async () => {
  db = await createTestDatabase("replay_cli");
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_RETRY_SCHEDULE: "", WEBHOOKD_CIRCUIT_FAILURES: "0" });
  receiver = await startReceiver((req) => (failing.has(req.path) ? { status: 500 } : undefined));
  api = restClient(server.url, TEST_ADMIN_KEY);
  env = { WEBHOOKD_URL: server.url, WEBHOOKD_API_KEY: TEST_ADMIN_KEY };
  sqlClient = new pg.Client({ connectionString: db.url });
  await sqlClient.connect();
});

after(async () => {
  await sqlClient?.end();
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Each line of stderr with when it arrived. */
  stderrLines: { line: string; at: number }[];
  ms: number;
}

/** Runs the real webhookctl, keeping stdout and stderr apart (stderr is a pipe: not a TTY). */
async function ctl(args: string[]): Promise<CliRun> {
  const started = Date.now();
  const p = spawnBin("webhookctl", args, env);
  let stdout = "";
  let stderr = "";
  let partial = "";
  const stderrLines: { line: string; at: number }[] = [];
  p.child.stdout!.on("data", (c: Buffer) => (stdout += c.toString()));
  p.child.stderr!.on("data", (c: Buffer) => {
    const text = c.toString();
    stderr += text;
    const parts = (partial + text).split("\n");
    partial = parts.pop()!;
    for (const line of parts) stderrLines.push({ line, at: Date.now() });
  });
  const code = await new Promise<number | null>((resolve) => p.child.once("close", (c) => resolve(c)));
  return { code, stdout, stderr, stderrLines, ms: Date.now() - started };
}

/** A webhook whose `count` deliveries have all failed (no retries), its endpoint healed again. */
async function webhookWithFailures(path: string, count: number): Promise<{ id: string; since: string }> {
  failing.add(path);
  const created = await api("POST", "/webhooks", { url: receiver.url(path), event_types: [`cli${path.replace(/\W/g, "")}.x`] });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id: string = created.body.webhook_id;
  const since = new Date().toISOString();
  const eventType = created.body.event_types[0];
  const batch = await api("POST", "/events/batch", { events: Array.from({ length: count }, (_, i) => ({ event_type: eventType, payload: { n: i + 1 } })) });
  assert.equal(batch.status, 201, JSON.stringify(batch.body));
  await eventually(
    () => api("GET", `/webhooks/${id}/deliveries?page_size=100`),
    (r) => r.body.deliveries?.length === count && r.body.deliveries.every((d: { status: string }) => d.status === "failed"),
    `the ${count} deliveries to fail`,
  );
  failing.delete(path);
  return { id, since };
}

const PROGRESS = /^\[[#.]{30}\] (\d+)\/(\d+) done \((\d+) delivered, (\d+) failed\) \d+\.\d\/s(, \S+ left)?$/;

test("webhookctl webhooks replay follows the replay to the end with progress lines, then prints it", async () => {
  const path = "/cli-follow";
  const { id } = await webhookWithFailures(path, 20);
  // The duration-ago form of --since.
  const run = await ctl(["webhooks", "replay", id, "--since", "10m", "--rate", "10"]);
  assert.equal(run.code, 0, `exit code\n${run.stderr}\n${run.stdout}`);

  const header = /^Replay (rpl_[0-9a-z]{26}): 20 deliveries put back in order at 10\/s\.$/m.exec(run.stderr);
  assert.ok(header, `stderr starts with the replay's summary:\n${run.stderr}`);
  const replayId = header[1]!;

  assert.doesNotMatch(run.stderr, /\r|\x1b\[/, "no terminal redraws on a pipe");
  const progress = run.stderrLines.filter((l) => l.line.includes(" done ("));
  assert.ok(progress.length >= 2, `progress lines on stderr:\n${run.stderr}`);
  for (const l of progress) assert.match(l.line, PROGRESS);
  assert.match(progress.at(-1)!.line, /^\[#{30}\] 20\/20 done \(20 delivered, 0 failed\) \d+\.\d\/s$/, "the final line");
  const done = progress.map((l) => Number(PROGRESS.exec(l.line)![1]));
  assert.deepEqual([...done].sort((a, b) => a - b), done, "progress only goes forward");
  // At most one line per 2 s, plus the final one.
  const periodic = progress.slice(0, -1);
  for (let i = 1; i < periodic.length; i++) {
    assert.ok(periodic[i]!.at - periodic[i - 1]!.at >= 1_800, `progress lines ${periodic[i]!.at - periodic[i - 1]!.at} ms apart:\n${run.stderr}`);
  }

  assert.match(run.stdout, new RegExp(`^replay_id:\\s+${replayId}$`, "m"));
  assert.match(run.stdout, new RegExp(`^webhook_id:\\s+${id}$`, "m"));
  assert.match(run.stdout, /^scope:\s+failed$/m);
  assert.match(run.stdout, /^rate_per_second:\s+10$/m);
  assert.match(run.stdout, /^total:\s+20$/m);
  assert.match(run.stdout, /^pending:\s+0$/m);
  assert.match(run.stdout, /^succeeded:\s+20$/m);
  assert.match(run.stdout, /^failed:\s+0$/m);

  // What the CLI reported is what happened.
  const replayed = receiver.forPath(path).slice(20);
  assert.deepEqual(replayed.map((r) => JSON.parse(r.body).payload.n), Array.from({ length: 20 }, (_, i) => i + 1));

  const status = await ctl(["webhooks", "replay-status", id, replayId]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, new RegExp(`^replay_id:\\s+${replayId}$`, "m"));
  assert.match(status.stdout, /^succeeded:\s+20$/m);
  const statusJson = await ctl(["webhooks", "replay-status", id, replayId, "--json"]);
  assert.equal(statusJson.code, 0, statusJson.stderr);
  const parsed = JSON.parse(statusJson.stdout);
  assert.equal(parsed.replay.replayId, replayId);
  assert.equal(parsed.replay.total, 20);
  assert.equal(parsed.replay.succeeded, 20);
});

test("--detach --json starts the replay and returns at once with its total", async () => {
  const { id, since } = await webhookWithFailures("/cli-detach", 5);
  const run = await ctl(["webhooks", "replay", id, "--since", since, "--rate", "0.5", "--detach", "--json"]);
  assert.equal(run.code, 0, run.stderr);
  const body = JSON.parse(run.stdout);
  assert.match(body.replay.replayId, /^rpl_/);
  assert.equal(body.replay.webhookId, id);
  assert.equal(body.replay.total, 5);
  assert.equal(body.replay.pending, 5, "returned before the replay could move");
  assert.equal(body.replay.ratePerSecond, 0.5);
  assert.doesNotMatch(run.stderr, / done \(/, "no progress when detached");
  // At 0.5/s the replay takes 8 s or more; the command did not wait for it.
  assert.ok(run.ms < 8_000, `took ${run.ms} ms`);

  const status = await ctl(["webhooks", "replay-status", id, body.replay.replayId, "--json"]);
  assert.equal(status.code, 0, status.stderr);
  assert.equal(JSON.parse(status.stdout).replay.total, 5);
});

test("bad --since, --scope and --rate exit 2 before calling the server; a bad range exits 1 with the server's message", async () => {
  const { id } = await webhookWithFailures("/cli-bad", 1);
  const count = async () => (await sqlClient.query("select count(*)::int as n from replays")).rows[0].n as number;
  const before = await count();

  const [banana, badUntil, scope, rate, missing, backwards, tooFast, unknown] = await Promise.all([
    ctl(["webhooks", "replay", id, "--since", "banana"]),
    ctl(["webhooks", "replay", id, "--since", "1h", "--until", "soon"]),
    ctl(["webhooks", "replay", id, "--since", "1h", "--scope", "succeeded"]),
    ctl(["webhooks", "replay", id, "--since", "1h", "--rate", "0"]),
    ctl(["webhooks", "replay", id]),
    ctl(["webhooks", "replay", id, "--since", "1h", "--until", "2h"]),
    ctl(["webhooks", "replay", id, "--since", "1h", "--rate", "20000"]),
    ctl(["webhooks", "replay", "wh_00000000000000000000000000", "--since", "1h"]),
  ]);

  assert.equal(banana.code, 2, banana.stderr);
  assert.match(banana.stderr, /--since/);
  assert.match(banana.stderr, /"banana" is neither an RFC 3339 time .* nor a duration ago/);
  assert.equal(banana.stdout, "");

  assert.equal(badUntil.code, 2, badUntil.stderr);
  assert.match(badUntil.stderr, /"soon"/);

  assert.equal(scope.code, 2, scope.stderr);
  assert.match(scope.stderr, /--scope/);

  assert.equal(rate.code, 2, rate.stderr);
  assert.match(rate.stderr, /--rate/);

  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /--since/);

  // These reach the server, which refuses them.
  assert.equal(backwards.code, 1, backwards.stderr);
  assert.match(backwards.stderr, /invalid_argument: until .* must be after since/);

  assert.equal(tooFast.code, 1, tooFast.stderr);
  assert.match(tooFast.stderr, /invalid_argument: rate_per_second/);

  assert.equal(unknown.code, 1, unknown.stderr);
  assert.match(unknown.stderr, /not_found/);

  assert.equal(await count(), before, "no replay was written");
});

test("on a terminal the progress is redrawn in place on one line", async () => {
  const { id } = await webhookWithFailures("/cli-tty", 4);
  let stdout = "";
  let stderr = "";
  const code = await main(["node", "webhookctl", "webhooks", "replay", id, "--since", "5m", "--rate", "20"], {
    stdout: { write: (s: string) => ((stdout += s), true) },
    stderr: { isTTY: true, write: (s: string) => ((stderr += s), true) },
    env,
  });
  assert.equal(code, 0, stderr);
  const draws = stderr.split("\r").slice(1);
  assert.ok(draws.length >= 2, JSON.stringify(stderr));
  for (const d of draws.slice(0, -1)) assert.match(d, /^\[[#.]{30}\] \d+\/4 done .*\x1b\[K$/);
  assert.match(draws.at(-1)!, /^\[#{30}\] 4\/4 done \(4 delivered, 0 failed\) \d+\.\d\/s\x1b\[K\n$/);
  assert.match(stdout, /^succeeded:\s+4$/m);
});
