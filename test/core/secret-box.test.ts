import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { SecretBox } from "../../src/core/secret-box.js";

const box = SecretBox.fromEncodedKey(SecretBox.generateEncodedKey());

test("sealed secrets open with the same key and context, and never show the plaintext", () => {
  fc.assert(
    fc.property(fc.string({ minLength: 1, maxLength: 200 }), fc.string({ maxLength: 40 }), (secret, context) => {
      const sealed = box.seal(secret, context);
      assert.ok(sealed.startsWith("enc:v1:"));
      if (secret.length > 3) assert.ok(!sealed.includes(secret));
      assert.equal(box.open(sealed, context), secret);
    }),
  );
});

test("sealing twice gives different ciphertexts", () => {
  assert.notEqual(box.seal("whsec_abc", "wh_1"), box.seal("whsec_abc", "wh_1"));
});

test("another key, another context or a flipped bit does not open", () => {
  const sealed = box.seal("whsec_secret", "wh_1");
  const other = SecretBox.fromEncodedKey(SecretBox.generateEncodedKey());
  assert.throws(() => other.open(sealed, "wh_1"));
  assert.throws(() => box.open(sealed, "wh_2"));
  const tampered = sealed.slice(0, -4) + (sealed.endsWith("AAAA") ? "BBBB" : "AAAA");
  assert.throws(() => box.open(tampered, "wh_1"));
  assert.throws(() => box.open("whsec_plain", "wh_1"), /not a sealed secret/);
});

test("keys must be 32 bytes in base64 or hex", () => {
  assert.doesNotThrow(() => SecretBox.fromEncodedKey("00".repeat(32)));
  assert.throws(() => SecretBox.fromEncodedKey("short"), /32 random bytes/);
  assert.throws(() => SecretBox.fromEncodedKey(Buffer.alloc(16).toString("base64")), /32 random bytes/);
});
