import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { EndpointGate, HEALTHY, MAX_THROTTLE_MS, visibleCircuitState, type CircuitPolicy } from "../../src/core/endpoint-gate.js";

const policy: CircuitPolicy = { failureThreshold: 3, cooldownMs: 1_000, maxCooldownMs: 3_000 };

/** Starts an attempt at `now` (asserting the gate lets it) and records its outcome. */
function attempt(gate: EndpointGate, now: number, signal: "success" | "failure" | "throttled" | "neutral"): boolean {
  assert.equal(gate.admit(now, 0), 0, `an attempt at ${now} should be admitted`);
  return gate.record(signal, now);
}

describe("circuit breaker", () => {
  test("opens after the threshold of failures in a row, and holds attempts until the cool-down ends", () => {
    const gate = new EndpointGate(policy);
    assert.equal(attempt(gate, 0, "failure"), true);
    attempt(gate, 10, "failure");
    assert.equal(gate.snapshot.circuitState, "closed");
    attempt(gate, 20, "failure");
    assert.deepEqual(gate.snapshot, { ...HEALTHY, circuitState: "open", openUntil: 1_020, openedCount: 1, consecutiveFailures: 3, failingSince: 0 });
    assert.equal(gate.admit(500, 0), 520, "open: wait for the rest of the cool-down");
    assert.equal(gate.admit(1_019, 0), 1);
  });

  test("a success in between resets the count", () => {
    const gate = new EndpointGate(policy);
    attempt(gate, 0, "failure");
    attempt(gate, 1, "failure");
    attempt(gate, 2, "success");
    attempt(gate, 3, "failure");
    attempt(gate, 4, "failure");
    assert.equal(gate.snapshot.circuitState, "closed");
    assert.equal(gate.snapshot.failingSince, 3);
  });

  test("half-open lets one probe through; a failed probe re-opens for twice as long, capped", () => {
    const gate = new EndpointGate(policy);
    for (let t = 0; t < 3; t++) attempt(gate, t, "failure");
    assert.equal(gate.admit(1_002, 0), 0, "the probe goes");
    assert.equal(gate.snapshot.circuitState, "half_open");
    assert.ok(gate.admit(1_003, 0) > 0, "a second attempt waits for the probe's outcome");
    gate.record("failure", 1_100);
    assert.equal(gate.snapshot.circuitState, "open");
    assert.equal(gate.snapshot.openUntil, 1_100 + 2_000);
    assert.equal(gate.admit(3_100, 0), 0);
    gate.record("failure", 3_100);
    assert.equal(gate.snapshot.openUntil, 3_100 + 3_000, "the cool-down is capped at maxCooldownMs");
  });

  test("an attempt still out from before the circuit opened neither ends the probe nor fails it; a probe that never went is given back", () => {
    const gate = new EndpointGate(policy);
    // Ordering keys: four attempts out at once; three fail and open the circuit, the fourth is still out.
    for (let t = 0; t < 4; t++) assert.equal(gate.admit(t, 0), 0);
    assert.equal(gate.admittedProbe, false);
    for (let t = 0; t < 3; t++) gate.record("failure", 10 + t, false);
    assert.equal(gate.snapshot.circuitState, "open");
    assert.equal(gate.admit(1_012, 0), 0, "the probe goes");
    assert.equal(gate.admittedProbe, true);
    gate.record("failure", 1_013, false);
    assert.equal(gate.snapshot.circuitState, "half_open", "the older attempt's failure is not the probe's");
    assert.ok(gate.admit(1_014, 0) > 0, "and the probe is still out");
    gate.record("neutral", 1_015, true);
    assert.equal(gate.admit(1_016, 0), 0, "a probe that was not started is given back: the next start probes");
    assert.equal(gate.admittedProbe, true);
  });

  test("a successful probe closes the circuit and clears the failure record", () => {
    const gate = new EndpointGate(policy);
    for (let t = 0; t < 3; t++) attempt(gate, t, "failure");
    assert.equal(gate.admit(2_000, 0), 0);
    assert.equal(gate.record("success", 2_010), true);
    assert.deepEqual(gate.snapshot, HEALTHY);
    assert.equal(gate.admit(2_011, 0), 0);
  });

  test("429s and refused addresses do not open it; a threshold of 0 turns it off", () => {
    const gate = new EndpointGate(policy);
    for (let t = 0; t < 10; t++) {
      gate.admit(t * MAX_THROTTLE_MS, 0);
      gate.record(t % 2 ? "throttled" : "neutral", t * MAX_THROTTLE_MS);
    }
    assert.equal(gate.snapshot.circuitState, "closed");
    const off = new EndpointGate({ ...policy, failureThreshold: 0 });
    for (let t = 0; t < 20; t++) attempt(off, t, "failure");
    assert.equal(off.snapshot.circuitState, "closed");
    assert.equal(off.snapshot.consecutiveFailures, 20);
  });

  test("a probe that was out when its owner died is sent again by the next owner", () => {
    const gate = new EndpointGate(policy, { ...HEALTHY, circuitState: "half_open", openedCount: 1, consecutiveFailures: 3, failingSince: 5 });
    assert.equal(gate.admit(10, 0), 0);
    assert.equal(gate.snapshot.circuitState, "half_open");
  });

  test("the visible state of an open circuit past its cool-down is half_open", () => {
    assert.equal(visibleCircuitState({ circuitState: "open", openUntil: 100 }, 50), "open");
    assert.equal(visibleCircuitState({ circuitState: "open", openUntil: 100 }, 100), "half_open");
    assert.equal(visibleCircuitState({ circuitState: "closed", openUntil: null }, 100), "closed");
  });
});

describe("429 slow-down", () => {
  test("each 429 doubles the spacing between attempt starts, up to a minute; successes halve it back to none", () => {
    const gate = new EndpointGate(policy);
    let now = 0;
    const spacings: number[] = [];
    for (let i = 0; i < 12; i++) {
      now += gate.admit(now, 0);
      assert.equal(gate.admit(now, 0), 0);
      gate.record("throttled", now);
      spacings.push(gate.snapshot.throttleMs);
    }
    assert.deepEqual(spacings.slice(0, 4), [100, 200, 400, 800]);
    assert.equal(spacings.at(-1), MAX_THROTTLE_MS);
    assert.ok(gate.snapshot.failingSince !== null, "a 429 is a failed attempt for auto-disable");
    assert.equal(gate.admit(now + 1_000, 0), MAX_THROTTLE_MS - 1_000, "the next start waits for the spacing");
    const after: number[] = [];
    for (let i = 0; i < 12; i++) {
      now += gate.admit(now, 0);
      assert.equal(gate.admit(now, 0), 0);
      gate.record("success", now);
      after.push(gate.snapshot.throttleMs);
    }
    assert.deepEqual(after.slice(0, 2), [30_000, 15_000]);
    assert.equal(after.at(-1), 0);
    assert.equal(gate.snapshot.failingSince, null);
  });
});

describe("rate limit", () => {
  test("the webhook's own limit spaces attempts by its token bucket", () => {
    const gate = new EndpointGate(policy);
    assert.equal(gate.admit(0, 2), 0);
    assert.equal(gate.admit(0, 2), 0, "a burst of one second's worth");
    assert.equal(gate.admit(0, 2), 500);
    assert.equal(gate.admit(500, 2), 0);
    assert.equal(gate.admit(500, 0), 0, "0 means no limit");
  });

  test("a refused start spends nothing: the probe and the token stay for the next try", () => {
    const gate = new EndpointGate(policy);
    for (let t = 0; t < 3; t++) attempt(gate, t, "failure");
    assert.equal(gate.admit(1_500, 1), 0, "probe at 1/s");
    gate.record("failure", 1_500);
    // Open again until 3_500; a refused admit must not take the token meant for the next probe.
    assert.ok(gate.admit(2_000, 1) > 0);
    assert.equal(gate.admit(3_500, 1), 0);
  });
});
