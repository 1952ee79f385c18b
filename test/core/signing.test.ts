import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, createPublicKey, verify } from 'node:crypto';
import fc from 'fast-check';
import { Webhook } from 'standardwebhooks';
import { Webhook as SvixWebhook } from 'svix';
import {
  buildDeliveryBody,
  buildDeliveryHeaders,
  decodeSecret,
  decodeSigningPublicKey,
  generateSecret,
  generateSigningKeyPair,
  signPayload,
  signPayloadEd25519,
  verifySignature,
  verifySignatureEd25519,
} from '../../src/core/signing.js';

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

function sampleBody(): string {
  return buildDeliveryBody({
    eventId: 'evt_01j9z3k8x2m4q6r8t0v2w4y6a8',
    eventType: 'document.created',
    timestamp: new Date('2024-05-01T12:00:00.000Z'),
    payloadJson: JSON.stringify({ id: 'doc_1', title: 'Grüße "quoted" \u2028 line' }),
  });
}

/** The reference verifiers throw on failure and return the parsed body on success. */
function referenceVerifiers(secret: string): Array<[string, (body: string, headers: Record<string, string>) => unknown]> {
  const std = new Webhook(secret);
  const svix = new SvixWebhook(secret);
  return [
    ['standardwebhooks', (body, headers) => std.verify(body, headers)],
    // svix reads svix-* headers first but falls back to the webhook-* names we send.
    ['svix', (body, headers) => svix.verify(body, headers)],
  ];
}

test('generateSecret makes distinct whsec_ secrets of 32 bytes', () => {
  const a = generateSecret();
  const b = generateSecret();
  assert.match(a, /^whsec_[A-Za-z0-9+/]{43}=$/);
  assert.notEqual(a, b);
  assert.equal(decodeSecret(a).length, 32);
});

test('decodeSecret strips the prefix and rejects junk', () => {
  const raw = Buffer.alloc(32, 7);
  assert.deepEqual(decodeSecret(`whsec_${raw.toString('base64')}`), raw);
  assert.deepEqual(decodeSecret(raw.toString('base64')), raw);
  // The svix documentation's example secret: 24 bytes, no padding.
  assert.equal(decodeSecret('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw').length, 24);
  for (const bad of ['whsec_', 'whsec_!!!!', 'whsec_abc def', 'whsec_dGVzdA==', `whsec_${Buffer.alloc(65).toString('base64')}`]) {
    assert.throws(() => decodeSecret(bad), Error, bad);
  }
});

test('signPayload matches a hand-computed HMAC and the spec format', () => {
  const secret = generateSecret();
  const id = 'evt_1';
  const timestamp = 1_700_000_000;
  const body = '{"a":1}';
  const expected = createHmac('sha256', decodeSecret(secret)).update(`${id}.${timestamp}.${body}`).digest('base64');
  assert.equal(signPayload({ id, timestamp, body, secrets: [secret] }), `v1,${expected}`);
  assert.throws(() => signPayload({ id, timestamp, body, secrets: [] }));
  assert.throws(() => signPayload({ id, timestamp: 1.5, body, secrets: [secret] }), RangeError);
});

test('signPayload agrees with the reference sign()', () => {
  const secret = generateSecret();
  const body = sampleBody();
  const ts = nowSeconds();
  const ours = signPayload({ id: 'evt_x', timestamp: ts, body, secrets: [secret] });
  assert.equal(ours, new Webhook(secret).sign('evt_x', new Date(ts * 1000), body));
});

test('a body given as its UTF-8 bytes is signed as the same body given as text, in v1 and v1a', () => {
  const body = sampleBody();
  const bytes = Buffer.from(body, 'utf8');
  assert.notEqual(bytes.length, body.length, 'the sample has multi-byte characters');
  const ts = nowSeconds();
  const secrets = [generateSecret(), generateSecret()];
  const fromBytes = signPayload({ id: 'evt_b', timestamp: ts, body: bytes, secrets });
  assert.equal(fromBytes, signPayload({ id: 'evt_b', timestamp: ts, body, secrets }));
  for (const secret of secrets) {
    const headers = buildDeliveryHeaders({ id: 'evt_b', timestamp: ts, body: bytes, secrets: [secret] });
    for (const [name, verifyWith] of referenceVerifiers(secret)) assert.deepEqual(verifyWith(body, { ...headers }), JSON.parse(body), name);
  }
  const { secretKey, publicKey } = generateSigningKeyPair();
  const ed = signPayloadEd25519({ id: 'evt_b', timestamp: ts, body: bytes, secretKeys: [secretKey] });
  assert.equal(verifySignatureEd25519({ id: 'evt_b', timestamp: ts, body, header: ed, publicKeys: [publicKey] }), true);
});

test('standardwebhooks and svix verify our deliveries', () => {
  const secret = generateSecret();
  const body = sampleBody();
  const headers = buildDeliveryHeaders({ id: 'evt_abc', timestamp: nowSeconds(), body, secrets: [secret] });
  assert.equal(headers['content-type'], 'application/json');
  assert.equal(headers['webhook-id'], 'evt_abc');
  assert.match(headers['webhook-timestamp'], /^\d+$/);
  assert.match(headers['webhook-signature'], /^v1,[A-Za-z0-9+/]{43}=$/);
  for (const [name, verifyWith] of referenceVerifiers(secret)) {
    assert.deepEqual(verifyWith(body, { ...headers }), JSON.parse(body), name);
  }
  // svix's own header names carry the same values.
  const svixHeaders = {
    'svix-id': headers['webhook-id'],
    'svix-timestamp': headers['webhook-timestamp'],
    'svix-signature': headers['webhook-signature'],
  };
  assert.deepEqual(new SvixWebhook(secret).verify(body, svixHeaders), JSON.parse(body));
});

test('during a rotation each secret verifies the two-signature header', () => {
  const oldSecret = generateSecret();
  const newSecret = generateSecret();
  const body = sampleBody();
  const headers = buildDeliveryHeaders({ id: 'evt_rot', timestamp: nowSeconds(), body, secrets: [newSecret, oldSecret] });
  assert.equal(headers['webhook-signature'].split(' ').length, 2);
  for (const secret of [oldSecret, newSecret]) {
    for (const [name, verifyWith] of referenceVerifiers(secret)) {
      assert.doesNotThrow(() => verifyWith(body, { ...headers }), name);
    }
    assert.equal(
      verifySignature({
        id: headers['webhook-id'],
        timestamp: headers['webhook-timestamp'],
        body,
        header: headers['webhook-signature'],
        secrets: [secret],
      }),
      true,
    );
  }
  // A secret that is neither is refused.
  for (const [name, verifyWith] of referenceVerifiers(generateSecret())) {
    assert.throws(() => verifyWith(body, { ...headers }), name);
  }
});

test('reference verifiers reject tampered body, timestamp, id and stale timestamps', () => {
  const secret = generateSecret();
  const body = sampleBody();
  const ts = nowSeconds();
  const headers = buildDeliveryHeaders({ id: 'evt_t', timestamp: ts, body, secrets: [secret] });
  const stale = buildDeliveryHeaders({ id: 'evt_t', timestamp: ts - 3600, body, secrets: [secret] });
  for (const [name, verifyWith] of referenceVerifiers(secret)) {
    assert.throws(() => verifyWith(body.replace('doc_1', 'doc_2'), { ...headers }), name);
    assert.throws(() => verifyWith(`${body} `, { ...headers }), name);
    assert.throws(() => verifyWith(body, { ...headers, 'webhook-timestamp': String(ts - 1) }), name);
    assert.throws(() => verifyWith(body, { ...headers, 'webhook-id': 'evt_u' }), name);
    assert.throws(() => verifyWith(body, { ...stale }), name);
  }
});

test('verifySignature: accepts ours, rejects tampering and junk without throwing', () => {
  const secret = generateSecret();
  const body = sampleBody();
  const now = new Date('2024-05-01T12:00:00Z');
  const ts = Math.floor(now.getTime() / 1000);
  const header = signPayload({ id: 'evt_v', timestamp: ts, body, secrets: [secret] });
  const base = { id: 'evt_v', timestamp: ts, body, header, secrets: [secret], now };
  assert.equal(verifySignature(base), true);
  assert.equal(verifySignature({ ...base, timestamp: String(ts) }), true);
  assert.equal(verifySignature({ ...base, secrets: ['junk', secret] }), true);
  assert.equal(verifySignature({ ...base, header: `v1,bm9wZQ== v2,xyz ${header}` }), true);
  assert.equal(verifySignature({ ...base, body: `${body} ` }), false);
  assert.equal(verifySignature({ ...base, timestamp: ts + 1 }), false);
  assert.equal(verifySignature({ ...base, id: 'evt_w' }), false);
  assert.equal(verifySignature({ ...base, secrets: [generateSecret()] }), false);
  assert.equal(verifySignature({ ...base, secrets: [] }), false);
  // Outside the default 5-minute tolerance either way, unless the caller widens it.
  assert.equal(verifySignature({ ...base, now: new Date(now.getTime() + 301_000) }), false);
  assert.equal(verifySignature({ ...base, now: new Date(now.getTime() - 301_000) }), false);
  assert.equal(verifySignature({ ...base, now: new Date(now.getTime() + 301_000), toleranceSeconds: 600 }), true);
  for (const junk of [undefined, '', 'v1', 'v1,', 'v1,!!!', 'v1,AAAA', ' ', 'v1a,abc', header.replace('v1,', 'v2,')]) {
    assert.equal(verifySignature({ ...base, header: junk }), false, String(junk));
  }
  for (const ts2 of ['', 'abc', '-1', '1.5', '1e9']) {
    assert.equal(verifySignature({ ...base, timestamp: ts2 }), false, ts2);
  }
  assert.equal(verifySignature({ ...base, secrets: [42 as unknown as string] }), false);
});

test('buildDeliveryBody produces the exact seed body', () => {
  const body = buildDeliveryBody({
    eventId: 'evt_1',
    eventType: 'document.created',
    timestamp: new Date(Date.UTC(2024, 4, 1, 12, 0, 0, 5)),
    payloadJson: '{"b":1,"a":[true,null]}',
  });
  assert.equal(
    body,
    '{"event_id":"evt_1","event_type":"document.created","timestamp":"2024-05-01T12:00:00.005Z","payload":{"b":1,"a":[true,null]}}',
  );
});

test('property: buildDeliveryBody parses back to its fields for any strings', () => {
  const jsonValue = fc.jsonValue();
  fc.assert(
    fc.property(
      fc.string({ unit: 'binary' }),
      fc.string({ unit: 'grapheme' }),
      fc.date({ min: new Date(0), max: new Date(Date.UTC(9999, 11, 31)), noInvalidDate: true }),
      fc.dictionary(fc.string({ unit: 'binary' }), jsonValue),
      (eventId, eventType, timestamp, payload) => {
        const payloadJson = JSON.stringify(payload);
        const body = buildDeliveryBody({ eventId, eventType, timestamp, payloadJson });
        const parsed: unknown = JSON.parse(body);
        assert.deepEqual(parsed, {
          event_id: eventId,
          event_type: eventType,
          timestamp: timestamp.toISOString(),
          payload: JSON.parse(payloadJson),
        });
        // The payload text is embedded verbatim, so its signature covers the stored bytes.
        assert.ok(body.endsWith(`"payload":${payloadJson}}`));
      },
    ),
    { numRuns: 300 },
  );
});

test('property: signatures made for random ids and bodies verify with the reference library', () => {
  const secret = generateSecret();
  const std = new Webhook(secret);
  fc.assert(
    fc.property(fc.string({ minLength: 1, unit: 'grapheme-ascii' }), fc.string({ unit: 'binary' }), (id, text) => {
      const body = JSON.stringify({ text });
      const headers = buildDeliveryHeaders({ id, timestamp: nowSeconds(), body, secrets: [secret] });
      assert.deepEqual(std.verify(body, { ...headers }), { text });
      assert.equal(
        verifySignature({ id, timestamp: headers['webhook-timestamp'], body, header: headers['webhook-signature'], secrets: [secret] }),
        true,
      );
    }),
    { numRuns: 200 },
  );
});

test('ed25519: key pair format and v1a signatures verify with node:crypto', () => {
  const { secretKey, publicKey } = generateSigningKeyPair();
  assert.match(secretKey, /^whsk_[A-Za-z0-9+/]{43}=$/);
  assert.match(publicKey, /^whpk_[A-Za-z0-9+/]{43}=$/);
  const body = sampleBody();
  const id = 'evt_ed';
  const timestamp = nowSeconds();
  const header = signPayloadEd25519({ id, timestamp, body, secretKeys: [secretKey] });
  assert.match(header, /^v1a,[A-Za-z0-9+/]{86}==$/);

  // Verify with node:crypto directly from the raw 32-byte public key (as a JWK, independent of our DER code).
  const key = createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey.slice(5), 'base64').toString('base64url') },
    format: 'jwk',
  });
  const signature = Buffer.from(header.slice(4), 'base64');
  const content = Buffer.from(`${id}.${timestamp}.${body}`);
  assert.equal(verify(null, content, key, signature), true);
  assert.equal(verify(null, Buffer.from(`${id}.${timestamp}.${body} `), key, signature), false);
  assert.equal(verify(null, content, decodeSigningPublicKey(publicKey), signature), true);
});

test('ed25519: rotation, verifySignatureEd25519 and junk', () => {
  const a = generateSigningKeyPair();
  const b = generateSigningKeyPair();
  const body = sampleBody();
  const now = new Date();
  const timestamp = Math.floor(now.getTime() / 1000);
  const header = signPayloadEd25519({ id: 'evt_r', timestamp, body, secretKeys: [a.secretKey, b.secretKey] });
  assert.equal(header.split(' ').length, 2);
  const base = { id: 'evt_r', timestamp, body, header, now };
  assert.equal(verifySignatureEd25519({ ...base, publicKeys: [a.publicKey] }), true);
  assert.equal(verifySignatureEd25519({ ...base, publicKeys: [b.publicKey] }), true);
  assert.equal(verifySignatureEd25519({ ...base, publicKeys: [generateSigningKeyPair().publicKey] }), false);
  assert.equal(verifySignatureEd25519({ ...base, body: `${body}x`, publicKeys: [a.publicKey] }), false);
  assert.equal(verifySignatureEd25519({ ...base, header: 'v1a,junk', publicKeys: [a.publicKey] }), false);
  assert.equal(verifySignatureEd25519({ ...base, publicKeys: ['whpk_junk'] }), false);
  // Deterministic: Ed25519 signatures of the same content are identical.
  assert.equal(signPayloadEd25519({ id: 'evt_r', timestamp, body, secretKeys: [a.secretKey] }), header.split(' ')[0]);
  assert.throws(() => signPayloadEd25519({ id: 'evt_r', timestamp, body, secretKeys: ['whsk_AAAA'] }));
});
