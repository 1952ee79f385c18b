import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatDuration, parseDuration, parseRetrySchedule } from '../../src/core/durations.js';

test('parseDuration reads each unit', () => {
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('5s'), 5_000);
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('2h'), 7_200_000);
  assert.equal(parseDuration('30d'), 2_592_000_000);
  assert.equal(parseDuration('0s'), 0);
  assert.equal(parseDuration(' 15s '), 15_000);
  assert.equal(parseDuration('1.5s'), 1_500);
});

test('parseDuration names the bad value', () => {
  for (const bad of ['', '5', 's', '5x', '-5s', '5 s', '5S', '1h30m', 'abc', '.5s', '5.s', '1e3s']) {
    assert.throws(() => parseDuration(bad), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.ok(err.message.includes(JSON.stringify(bad)), err.message);
      return true;
    });
  }
  assert.throws(() => parseDuration(`${'9'.repeat(30)}d`), /too large/);
});

test('parseRetrySchedule', () => {
  assert.deepEqual(parseRetrySchedule('5s,5m,30m,2h,5h,10h,10h'), [
    5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
  ]);
  assert.deepEqual(parseRetrySchedule(''), []);
  assert.deepEqual(parseRetrySchedule('  '), []);
  assert.deepEqual(parseRetrySchedule('1s, 2s'), [1_000, 2_000]);
  assert.throws(() => parseRetrySchedule('5s,5x,1m'), /entry 2: invalid duration "5x"/);
  assert.throws(() => parseRetrySchedule('5s,,1m'), /entry 2: invalid duration ""/);
  assert.throws(() => parseRetrySchedule('5s,'), /entry 2/);
});

test('formatDuration picks the largest exact unit', () => {
  assert.equal(formatDuration(0), '0s');
  assert.equal(formatDuration(500), '500ms');
  assert.equal(formatDuration(1_500), '1500ms');
  assert.equal(formatDuration(5_000), '5s');
  assert.equal(formatDuration(90_000), '90s');
  assert.equal(formatDuration(300_000), '5m');
  assert.equal(formatDuration(7_200_000), '2h');
  assert.equal(formatDuration(2_592_000_000), '30d');
  assert.equal(formatDuration(-5_000), '-5s');
});

test('property: parseDuration(formatDuration(ms)) === ms', () => {
  fc.assert(
    fc.property(fc.nat({ max: 10 * 365 * 86_400_000 }), (ms) => parseDuration(formatDuration(ms)) === ms),
    { numRuns: 1000 },
  );
});
