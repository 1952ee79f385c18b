import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  matchesEventType,
  normaliseEventTypes,
  patternsMatching,
  validateEventType,
  validateSubscriptionPattern,
} from '../../src/core/event-types.js';

const segmentChars = 'abcxyzABZ019_-'.split('');
const segment = fc.string({ unit: fc.constantFrom(...segmentChars), minLength: 1, maxLength: 6 });
const eventType = fc.array(segment, { minLength: 1, maxLength: 5 }).map((parts) => parts.join('.'));
// Small alphabet so random patterns and types share prefixes often enough to match.
const narrowSegment = fc.constantFrom('a', 'b', 'c');
const narrowType = fc.array(narrowSegment, { minLength: 1, maxLength: 4 }).map((p) => p.join('.'));
const narrowPattern = fc.oneof(
  fc.constant('*'),
  narrowType,
  narrowType.map((t) => `${t}.*`),
);

test('valid event types', () => {
  for (const t of ['a', 'document.created', 'a.b.c', 'Order_v2.line-item.UPDATED', `${'x'.repeat(64)}.y`]) {
    assert.equal(validateEventType(t), null, t);
  }
  const longest = Array.from({ length: 4 }, () => 'x'.repeat(49)).join('.'); // 199 chars
  assert.equal(validateEventType(`${longest}x`), null);
});

test('invalid event types say what is wrong', () => {
  const cases: Array<[unknown, RegExp]> = [
    ['', /empty/],
    ['a..b', /empty segment/],
    ['.a', /empty segment/],
    ['a.', /empty segment/],
    ['a b', /invalid segment "a b"/],
    ['a/b', /invalid segment/],
    ['é.created', /invalid segment/],
    ['a.*', /wildcards are only allowed/],
    ['*', /wildcards/],
    [`${'x'.repeat(65)}`, /longer than 64/],
    [Array.from({ length: 5 }, () => 'x'.repeat(40)).join('.'), /longer than 200/],
    [42, /must be a string/],
    [null, /must be a string/],
  ];
  for (const [t, re] of cases) {
    const error = validateEventType(t);
    assert.ok(error !== null, `expected ${String(t)} to be rejected`);
    assert.match(error, re);
  }
});

test('subscription patterns allow a trailing .* or exactly *', () => {
  for (const p of ['*', 'a.*', 'a.b.*', 'document.created']) assert.equal(validateSubscriptionPattern(p), null, p);
  const bad: Array<[string, RegExp]> = [
    ['.*', /empty prefix/],
    ['a*', /misplaced/],
    ['a.*.b', /misplaced/],
    ['*.a', /misplaced/],
    ['a.**', /misplaced/],
    ['**', /misplaced/],
    ['a..*', /empty segment/],
    ['', /empty/],
    ['a b.*', /invalid segment/],
  ];
  for (const [p, re] of bad) {
    const error = validateSubscriptionPattern(p);
    assert.ok(error !== null, `expected ${p} to be rejected`);
    assert.match(error, re);
  }
});

test('matchesEventType', () => {
  assert.equal(matchesEventType('*', 'a'), true);
  assert.equal(matchesEventType('a.b', 'a.b'), true);
  assert.equal(matchesEventType('a.b', 'a.b.c'), false);
  assert.equal(matchesEventType('a.*', 'a.b'), true);
  assert.equal(matchesEventType('a.*', 'a.b.c'), true);
  assert.equal(matchesEventType('a.*', 'a'), false);
  assert.equal(matchesEventType('doc.*', 'document.created'), false);
  assert.equal(matchesEventType('Doc.created', 'doc.created'), false);
});

test('patternsMatching lists every matching pattern, most specific first', () => {
  assert.deepEqual(patternsMatching('a.b.c'), ['a.b.c', 'a.b.*', 'a.*', '*']);
  assert.deepEqual(patternsMatching('a'), ['a', '*']);
  assert.deepEqual(patternsMatching('document.created'), ['document.created', 'document.*', '*']);
});

test('property: every pattern from patternsMatching(t) is valid and matches t', () => {
  fc.assert(
    fc.property(eventType, (t) => {
      assert.equal(validateEventType(t), null);
      for (const p of patternsMatching(t)) {
        assert.equal(validateSubscriptionPattern(p), null, p);
        assert.equal(matchesEventType(p, t), true, `${p} should match ${t}`);
      }
    }),
    { numRuns: 500 },
  );
});

test('property: matchesEventType agrees with patternsMatching membership', () => {
  fc.assert(
    fc.property(narrowPattern, narrowType, (p, t) => {
      assert.equal(matchesEventType(p, t), patternsMatching(t).includes(p), `${p} vs ${t}`);
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(
      fc.oneof(fc.constant('*'), eventType, eventType.map((t) => `${t}.*`)),
      eventType,
      (p, t) => matchesEventType(p, t) === patternsMatching(t).includes(p),
    ),
    { numRuns: 1000 },
  );
});

test('normaliseEventTypes validates, de-duplicates and keeps order', () => {
  assert.deepEqual(normaliseEventTypes(['b.*', 'a.created', 'b.*', '*', 'a.created']), {
    ok: true,
    types: ['b.*', 'a.created', '*'],
  });
  const empty = normaliseEventTypes([]);
  assert.equal(empty.ok, false);
  assert.match(empty.ok ? '' : empty.reason, /at least one/);

  const bad = normaliseEventTypes(['a.created', 'a..b']);
  assert.equal(bad.ok, false);
  assert.match(bad.ok ? '' : bad.reason, /event_types\[1\].*"a\.\.b"/);

  const notString = normaliseEventTypes(['a', 7]);
  assert.match(notString.ok ? '' : notString.reason, /event_types\[1\].*string/);

  assert.equal(normaliseEventTypes('a.b').ok, false);
  assert.equal(normaliseEventTypes(undefined).ok, false);
});

test('normaliseEventTypes allows 50 distinct entries, not 51', () => {
  const fifty = Array.from({ length: 50 }, (_, i) => `t${i}.created`);
  assert.deepEqual(normaliseEventTypes(fifty), { ok: true, types: fifty });
  assert.equal(normaliseEventTypes([...fifty, ...fifty]).ok, true);
  const tooMany = normaliseEventTypes([...fifty, 'one.more']);
  assert.equal(tooMany.ok, false);
  assert.match(tooMany.ok ? '' : tooMany.reason, /at most 50/);
});
