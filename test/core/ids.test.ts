import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ID_KINDS, encodeId, idKind, idTimestamp, isId, newId } from '../../src/core/ids.js';

test('newId has the kind prefix and a 26-char Crockford base32 body', () => {
  for (const kind of ID_KINDS) {
    const id = newId(kind);
    assert.match(id, new RegExp(`^${kind}_[0-9a-hjkmnp-tv-z]{26}$`));
    assert.equal(isId(id, kind), true);
    assert.equal(idKind(id), kind);
  }
});

test('ids are unique and sort in creation order, even within one millisecond', () => {
  const ids = Array.from({ length: 10_000 }, () => newId('evt'));
  assert.equal(new Set(ids).size, ids.length);
  const sorted = [...ids].sort();
  assert.deepEqual(sorted, ids);
});

test('ids minted later sort later', async () => {
  const a = newId('dlv');
  await new Promise((resolve) => setTimeout(resolve, 3));
  const b = newId('dlv');
  assert.ok(a < b);
});

test('idTimestamp recovers the creation time', () => {
  const before = Date.now();
  const id = newId('wh');
  const after = Date.now();
  const at = idTimestamp(id);
  assert.ok(at !== null);
  // Monotonic minting may borrow a millisecond ahead, never one behind.
  assert.ok(at.getTime() >= before && at.getTime() <= after + 1);
  assert.equal(idTimestamp('nope'), null);
});

test('encodeId is a ULID: known vector and ordering by timestamp', () => {
  const zeros = new Uint8Array(10);
  assert.equal(encodeId('evt', 0, zeros), 'evt_00000000000000000000000000');
  const ones = new Uint8Array(10).fill(0xff);
  assert.equal(encodeId('evt', 2 ** 48 - 1, ones), 'evt_7zzzzzzzzzzzzzzzzzzzzzzzzz');
  // 1469918176385 is the timestamp of the ULID spec's example "01ARYZ6S41…".
  assert.ok(encodeId('evt', 1469918176385, zeros).startsWith('evt_01aryz6s41'));
  assert.ok(encodeId('evt', 1000, ones) < encodeId('evt', 1001, zeros));
  assert.throws(() => encodeId('evt', -1, zeros), RangeError);
  assert.throws(() => encodeId('evt', 2 ** 48, zeros), RangeError);
  assert.throws(() => encodeId('evt', 0, new Uint8Array(9)), RangeError);
});

test('encodeId spells every 5 bits of the random part in its place', () => {
  // Each random bit alone, at each position: the fast 40-bit encoder against the plain base32 of the bits.
  for (let bit = 0; bit < 80; bit++) {
    const random = new Uint8Array(10);
    random[Math.floor(bit / 8)] = 0x80 >> bit % 8;
    const body = encodeId('att', 0, random).slice(4 + 10);
    const bits = [...random].map((b) => b.toString(2).padStart(8, '0')).join('');
    const expected = Array.from({ length: 16 }, (_, i) => '0123456789abcdefghjkmnpqrstvwxyz'[parseInt(bits.slice(i * 5, i * 5 + 5), 2)]).join('');
    assert.equal(body, expected, `bit ${bit}`);
  }
});

test('isId and idKind reject malformed values', () => {
  const id = newId('evt');
  const body = id.slice(4);
  assert.equal(isId(id, 'wh'), false);
  assert.equal(isId(`evt_${body}x`, 'evt'), false);
  assert.equal(isId(`evt_${body.slice(1)}`, 'evt'), false);
  assert.equal(isId(`evt_${body.toUpperCase()}`, 'evt'), false);
  assert.equal(isId(`evt_8${body.slice(1)}`, 'evt'), false); // timestamp overflow
  assert.equal(isId(`evt_${body.slice(0, 25)}u`, 'evt'), false); // 'u' is not Crockford
  assert.equal(isId(`foo_${body}`, 'evt'), false);
  assert.equal(isId('', 'evt'), false);
  assert.equal(isId(42, 'evt'), false);
  assert.equal(isId(undefined, 'evt'), false);
  assert.equal(idKind(`foo_${body}`), null);
  assert.equal(idKind(`evt-${body}`), null);
  assert.equal(idKind(null), null);
});
