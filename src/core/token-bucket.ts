/**
 * A token bucket: `ratePerSecond` tokens flow in, up to `burst`; each take spends one. Pure: time is
 * passed in, so limits are tested without waiting.
 */
export class TokenBucket {
  private tokens: number;
  private updatedAt: number;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst;
    this.updatedAt = now;
  }

  /** Spends a token and returns 0, or returns how many ms until one is there (spending nothing). */
  take(now: number): number {
    this.refill(now);
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) / this.ratePerSecond) * 1000);
  }

  private refill(now: number): void {
    const elapsed = Math.max(0, now - this.updatedAt);
    this.tokens = Math.min(this.burst, this.tokens + (elapsed / 1000) * this.ratePerSecond);
    this.updatedAt = now;
  }
}

/** One bucket per key, for keys that come and go (API keys, webhooks); idle full buckets are dropped. */
export class KeyedRateLimiter {
  private readonly buckets = new Map<string, { bucket: TokenBucket; lastUsed: number }>();

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
  ) {}

  take(key: string, now: number): number {
    let entry = this.buckets.get(key);
    if (!entry) {
      if (this.buckets.size >= 100_000) this.evict(now);
      entry = { bucket: new TokenBucket(this.ratePerSecond, this.burst, now), lastUsed: now };
      this.buckets.set(key, entry);
    }
    entry.lastUsed = now;
    return entry.bucket.take(now);
  }

  private evict(now: number): void {
    // A bucket untouched for the time it takes to refill completely is indistinguishable from a new one.
    const idleMs = (this.burst / this.ratePerSecond) * 1000;
    for (const [key, entry] of this.buckets) if (now - entry.lastUsed > idleMs) this.buckets.delete(key);
  }
}
