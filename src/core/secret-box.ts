import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * Signing secrets at rest: AES-256-GCM under the operator's key, so a copy of the database alone never
 * reveals a secret. The webhook id is bound in as associated data: a sealed secret moved to another
 * webhook's row does not open.
 */
const PREFIX = "enc:v1:";
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class SecretBox {
  private constructor(private readonly key: Buffer) {}

  /** From WEBHOOKD_ENCRYPTION_KEY: 32 bytes as base64 (44 characters) or hex (64 characters). */
  static fromEncodedKey(encoded: string): SecretBox {
    const text = encoded.trim();
    const key = /^[0-9a-fA-F]{64}$/.test(text) ? Buffer.from(text, "hex") : Buffer.from(text, "base64");
    if (key.length !== 32 || (!/^[0-9a-fA-F]{64}$/.test(text) && key.toString("base64") !== text)) {
      throw new Error("expected 32 random bytes as base64 (44 characters) or hex (64 characters); make one with `openssl rand -base64 32`");
    }
    return new SecretBox(key);
  }

  static generateEncodedKey(): string {
    return randomBytes(32).toString("base64");
  }

  seal(plaintext: string, context: string): string {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    cipher.setAAD(Buffer.from(context, "utf8"));
    const sealed = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()]);
    return `${PREFIX}${iv.toString("base64")}:${sealed.toString("base64")}`;
  }

  /** Throws when the value was sealed under another key or context, or was altered. */
  open(sealed: string, context: string): string {
    if (!sealed.startsWith(PREFIX)) throw new Error("not a sealed secret");
    const [ivText, bodyText] = sealed.slice(PREFIX.length).split(":");
    const iv = Buffer.from(ivText ?? "", "base64");
    const body = Buffer.from(bodyText ?? "", "base64");
    if (iv.length !== IV_BYTES || body.length < TAG_BYTES) throw new Error("malformed sealed secret");
    const decipher = createDecipheriv("aes-256-gcm", this.key, iv);
    decipher.setAAD(Buffer.from(context, "utf8"));
    decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
    return Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BYTES)), decipher.final()]).toString("utf8");
  }
}
