// Group commit: calls that arrive while a commit runs go together in the next one, as whole calls, within
// the item and weight limits; each caller gets its own results; a failed commit fails only its own calls.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GroupCommit } from "../../src/server/group-commit.js";

/** A commit that records its groups and finishes only when told to. */
function gated() {
  const groups: string[][] = [];
  const waiting: (() => void)[] = [];
  const commit = async (_key: string, items: string[]) => {
    groups.push(items);
    await new Promise<void>((resolve) => waiting.push(resolve));
    if (items.includes("boom")) throw new Error("commit failed");
    return items.map((i) => i.toUpperCase());
  };
  const release = async () => {
    while (waiting.length === 0) await new Promise((r) => setImmediate(r));
    waiting.shift()!();
  };
  return { groups, commit, release };
}

test("calls arriving during a commit share the next one, and each gets its own results", async () => {
  const g = gated();
  const gc = new GroupCommit(g.commit, 100);
  const first = gc.submit("t", ["a"]);
  const second = gc.submit("t", ["b", "c"]);
  const third = gc.submit("t", ["d"]);
  await g.release();
  await g.release();
  assert.deepEqual(await Promise.all([first, second, third]), [["A"], ["B", "C"], ["D"]]);
  assert.deepEqual(g.groups, [["a"], ["b", "c", "d"]]);
});

test("a group stops before the call that would pass the item or the weight limit; a first call always goes", async () => {
  const g = gated();
  const gc = new GroupCommit(g.commit, 3, (item: string) => item.length, 10);
  const calls = [gc.submit("t", ["x"]), gc.submit("t", ["aa", "bb"]), gc.submit("t", ["c"]), gc.submit("t", ["dddddddddddd"]), gc.submit("t", ["e"])];
  for (let i = 0; i < 4; i++) await g.release();
  await Promise.all(calls);
  // ["aa","bb"] + ["c"] is 3 items; "dddddddddddd" (12) is over the weight alone, so it goes by itself.
  assert.deepEqual(g.groups, [["x"], ["aa", "bb", "c"], ["dddddddddddd"], ["e"]]);
});

test("keys commit independently, and a failed commit fails its own calls only", async () => {
  const g = gated();
  const gc = new GroupCommit(g.commit, 100);
  const a1 = gc.submit("a", ["a1"]);
  const b1 = gc.submit("b", ["b1"]);
  const a2 = gc.submit("a", ["boom"]);
  const a3 = gc.submit("a", ["a3"]);
  await g.release(); // a1
  await g.release(); // b1
  assert.deepEqual(await a1, ["A1"]);
  assert.deepEqual(await b1, ["B1"]);
  await g.release(); // boom + a3 together
  await assert.rejects(a2, /commit failed/);
  await assert.rejects(a3, /commit failed/);
  const a4 = gc.submit("a", ["a4"]);
  await g.release();
  assert.deepEqual(await a4, ["A4"]);
});
