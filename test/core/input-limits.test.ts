import { test } from "node:test";
import assert from "node:assert/strict";
import { exceedsDepth, isStorableText, longerThan } from "../../src/core/input-limits.js";

test("storable text refuses NUL and lone surrogates, accepts the rest of Unicode", () => {
  assert.ok(isStorableText("plain"));
  assert.ok(isStorableText("émoji 🎉 and 中文"));
  assert.ok(!isStorableText("a\u0000b"));
  assert.ok(!isStorableText("\ud800"));
  assert.ok(!isStorableText("x\udfffy"));
});

test("depth counts objects and arrays, without recursion", () => {
  assert.equal(exceedsDepth({ a: 1 }, 1), false);
  assert.equal(exceedsDepth({ a: { b: 1 } }, 1), true);
  assert.equal(exceedsDepth([[[]]], 3), false);
  assert.equal(exceedsDepth([[[]]], 2), true);
  let deep: unknown = {};
  for (let i = 0; i < 100_000; i++) deep = [deep];
  assert.equal(exceedsDepth(deep, 64), true);
  assert.equal(exceedsDepth("text", 0), false);
});

test("lengths are counted in characters as a user counts them: an emoji is one", () => {
  assert.equal(longerThan("a".repeat(256), 256), false);
  assert.equal(longerThan("a".repeat(257), 256), true);
  assert.equal(longerThan("😀".repeat(256), 256), false, "256 emoji are 512 UTF-16 code units");
  assert.equal(longerThan("😀".repeat(257), 256), true);
  assert.equal(longerThan("", 0), false);
});
