// The API's copy of the subscribers it plans ingests from: keyed by tenant and pattern set, bounded by the
// subscribers it holds, and a stale list is dropped only if it is still the one held.
import { test } from "node:test";
import assert from "node:assert/strict";
import { SubscriberLists } from "../../src/server/subscriber-lists.js";
import type { Subscriber } from "../../src/store/ingest.js";

const subscribers = (n: number, prefix = "wh"): Subscriber[] =>
  Array.from({ length: n }, (_, i) => ({ id: `${prefix}_${i}`, event_types: ["*"], shard: i % 64 }));

test("a list is keyed by tenant and by the set of patterns, whatever their order", () => {
  assert.equal(SubscriberLists.key("ten_a", ["a.b", "a.*", "*"]), SubscriberLists.key("ten_a", ["*", "a.b", "a.*"]));
  assert.notEqual(SubscriberLists.key("ten_a", ["a.b", "*"]), SubscriberLists.key("ten_b", ["a.b", "*"]));
  assert.notEqual(SubscriberLists.key("ten_a", ["a.b", "*"]), SubscriberLists.key("ten_a", ["a.b"]));
});

test("reaching the bound drops every list, and the count starts again", () => {
  const lists = new SubscriberLists(100);
  lists.set("k1", subscribers(40));
  lists.set("k2", subscribers(40));
  assert.equal(lists.size, 82);
  lists.set("k3", subscribers(30)); // 82 + 31 > 100
  assert.equal(lists.get("k1"), undefined);
  assert.equal(lists.get("k2"), undefined);
  assert.equal(lists.get("k3")!.length, 30);
  assert.equal(lists.size, 31);
  // Replacing a list counts it once.
  lists.set("k3", subscribers(10));
  assert.equal(lists.size, 11);
  // Empty lists count too: a tenant publishing many types nobody takes cannot grow it without bound.
  for (let i = 0; i < 500; i++) lists.set(`empty${i}`, []);
  assert.ok(lists.size <= 100);
});

test("a list's key counts toward the bound by its length: long pattern sets with no subscriber cannot pile up", () => {
  const lists = new SubscriberLists(10_000);
  // A batch of 100 long event types of one-letter segments makes keys of a million characters; a quarter here.
  const keys = Array.from({ length: 50 }, (_, i) => SubscriberLists.key("ten_a", Array.from({ length: 2_500 }, (_, p) => `t${i}.${"a.".repeat(p % 100)}*`)));
  assert.ok(keys[0]!.length > 250_000);
  let kept = 0;
  keys.forEach((key, i) => {
    lists.set(key, []);
    kept = Math.max(kept, keys.slice(0, i + 1).filter((k) => lists.get(k) !== undefined).length);
  });
  assert.ok(lists.size <= 10_000, `size ${lists.size}`);
  // 10,000 units of 256 characters: about 10 such keys at most, not all 50.
  assert.ok(kept <= 10, `${kept} lists of a quarter-million-character key held at once`);
});

test("a stale list is forgotten only while it is still the one held", () => {
  const lists = new SubscriberLists();
  const stale = subscribers(3, "old");
  lists.set("k", stale);
  const newer = subscribers(4, "new");
  lists.set("k", newer);
  lists.forget("k", stale);
  assert.equal(lists.get("k"), newer, "another ingest's newer read is kept");
  lists.forget("k", newer);
  assert.equal(lists.get("k"), undefined);
  assert.equal(lists.size, 0);
});
