import { TokenBucket } from "./token-bucket.js";

/**
 * How fast one endpoint may be sent to: its own rate limit, a slow-down after repeated 429s, and a
 * circuit breaker that stops attempts to an endpoint that keeps failing. Pure: time is passed in.
 *
 * The circuit: `closed` sends freely; after `failureThreshold` failures in a row it is `open` and no
 * attempt starts (deliveries wait, none is failed for it) until the cool-down ends; then `half_open`
 * lets one attempt through as a probe — success closes it, failure opens it again for twice as long.
 */
export type CircuitState = "closed" | "open" | "half_open";

export interface CircuitPolicy {
  /** Failures in a row that open the circuit; 0 turns the breaker off. */
  failureThreshold: number;
  /** How long the circuit first stays open; doubles each time a probe fails, up to maxCooldownMs. */
  cooldownMs: number;
  maxCooldownMs: number;
}

/** What is saved with the webhook, so that GetWebhook shows it and a new lane owner takes it over. */
export interface EndpointHealth {
  circuitState: CircuitState;
  /** When an open circuit lets its next probe through; null unless open. */
  openUntil: number | null;
  /** Times opened since last closed. */
  openedCount: number;
  consecutiveFailures: number;
  /** The first failed attempt since the last success; null while healthy. */
  failingSince: number | null;
  /** Least spacing between attempt starts, from repeated 429s; 0: none. */
  throttleMs: number;
}

/** How an attempt bears on the endpoint's health. */
export type AttemptSignal =
  | "success"
  | "failure"
  /** 429: the endpoint is up and asks us to slow down. */
  | "throttled"
  /** Says nothing about the endpoint (the SSRF guard refused the address; the send never happened). */
  | "neutral";

export const HEALTHY: EndpointHealth = {
  circuitState: "closed",
  openUntil: null,
  openedCount: 0,
  consecutiveFailures: 0,
  failingSince: null,
  throttleMs: 0,
};

/** A half-open circuit with its probe out: others look again after this long (or when the probe ends). */
const PROBE_RECHECK_MS = 1_000;
const MIN_THROTTLE_MS = 100;
export const MAX_THROTTLE_MS = 60_000;

export class EndpointGate {
  private health: EndpointHealth;
  private probeOut = false;
  /**
   * Whether the start admitted last is the half-open circuit's probe. The caller hands it back with the
   * outcome: another attempt still out from before the circuit opened must neither end the probe nor
   * count as its failure.
   */
  admittedProbe = false;
  private lastStart = -Infinity;
  private bucket: { rate: number; limiter: TokenBucket } | undefined;

  constructor(
    private readonly policy: CircuitPolicy,
    saved: EndpointHealth = HEALTHY,
  ) {
    // A probe that was out when the previous owner died never reported: probe again.
    this.health = { ...saved, circuitState: saved.circuitState === "half_open" ? "open" : saved.circuitState };
    if (this.health.circuitState === "open" && this.health.openUntil === null) this.health.openUntil = 0;
  }

  get snapshot(): EndpointHealth {
    return { ...this.health };
  }

  /**
   * 0 when an attempt may start now — and then the start is counted (a token spent, the probe taken) —
   * or how many ms to wait before asking again.
   */
  admit(now: number, ratePerSecond: number): number {
    const h = this.health;
    if (h.circuitState === "open") {
      if (now < h.openUntil!) return h.openUntil! - now;
    } else if (h.circuitState === "half_open" && this.probeOut) {
      return PROBE_RECHECK_MS;
    }
    const spacing = this.lastStart + h.throttleMs - now;
    if (spacing > 0) return spacing;
    const tokenWait = this.takeToken(now, ratePerSecond);
    if (tokenWait > 0) return tokenWait;
    if (h.circuitState === "open") this.health = { ...h, circuitState: "half_open", openUntil: null };
    this.admittedProbe = this.health.circuitState === "half_open";
    if (this.admittedProbe) this.probeOut = true;
    this.lastStart = now;
    return 0;
  }

  /**
   * Takes an attempt's outcome (`probe`: it was the probe, see `admittedProbe`; a "neutral" one gives a
   * probe that never went back); true when the saved health changed.
   */
  record(signal: AttemptSignal, now: number, probe = this.probeOut): boolean {
    const before = this.health;
    const wasProbe = probe && this.probeOut;
    if (probe) this.probeOut = false;
    switch (signal) {
      case "success":
        this.health = { ...HEALTHY, throttleMs: before.throttleMs >= 2 * MIN_THROTTLE_MS ? Math.floor(before.throttleMs / 2) : 0 };
        break;
      case "throttled":
        this.health = {
          ...before,
          throttleMs: Math.min(MAX_THROTTLE_MS, Math.max(MIN_THROTTLE_MS, before.throttleMs * 2)),
          failingSince: before.failingSince ?? now,
        };
        break;
      case "failure": {
        const failures = before.consecutiveFailures + 1;
        const opens =
          this.policy.failureThreshold > 0 &&
          ((before.circuitState === "half_open" && wasProbe) || (before.circuitState === "closed" && failures >= this.policy.failureThreshold));
        this.health = {
          ...before,
          consecutiveFailures: failures,
          failingSince: before.failingSince ?? now,
          ...(opens ? this.opened(before.openedCount, now) : {}),
        };
        break;
      }
      case "neutral":
        break;
    }
    return !sameHealth(before, this.health);
  }

  private opened(openedCount: number, now: number): Pick<EndpointHealth, "circuitState" | "openUntil" | "openedCount"> {
    const cooldown = Math.min(this.policy.maxCooldownMs, this.policy.cooldownMs * 2 ** Math.min(openedCount, 30));
    return { circuitState: "open", openUntil: now + cooldown, openedCount: openedCount + 1 };
  }

  private takeToken(now: number, ratePerSecond: number): number {
    if (ratePerSecond <= 0) {
      this.bucket = undefined;
      return 0;
    }
    if (!this.bucket || this.bucket.rate !== ratePerSecond) {
      // A burst of one second's worth (at least one), so a limit of 0.5/s means one every two seconds.
      this.bucket = { rate: ratePerSecond, limiter: new TokenBucket(ratePerSecond, Math.max(1, ratePerSecond), now) };
    }
    return this.bucket.limiter.take(now);
  }
}

export function sameHealth(a: EndpointHealth, b: EndpointHealth): boolean {
  return (
    a.circuitState === b.circuitState &&
    a.openUntil === b.openUntil &&
    a.openedCount === b.openedCount &&
    a.consecutiveFailures === b.consecutiveFailures &&
    a.failingSince === b.failingSince &&
    a.throttleMs === b.throttleMs
  );
}

/** The state to show: an open circuit whose cool-down is over is waiting for its probe. */
export function visibleCircuitState(health: Pick<EndpointHealth, "circuitState" | "openUntil">, now: number): CircuitState {
  return health.circuitState === "open" && health.openUntil !== null && health.openUntil <= now ? "half_open" : health.circuitState;
}
