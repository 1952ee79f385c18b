import { loadConfig } from "../../src/config.js";
import { startWebhookd, type Role, type StartOptions } from "../../src/app.js";
import { createLogger } from "../../src/logger.js";

export const TEST_ADMIN_KEY = "whk_test_admin_key_for_integration_tests_only";
/** Every process of one test must share it, as every process of a deployment does. */
export const TEST_ENCRYPTION_KEY = Buffer.alloc(32, 7).toString("base64");

/**
 * webhookd in this process with a test's configuration: the same code the binary runs, on a port of
 * its own, with http and loopback allowed so a local receiver can be the endpoint.
 */
export async function startTestApp(env: Record<string, string>, roles: Role[] = ["api", "dispatcher"], extra: Omit<StartOptions, "roles"> = {}) {
  const config = loadConfig({
    WEBHOOKD_LISTEN: "127.0.0.1:0",
    WEBHOOKD_ALLOW_HTTP: "true",
    WEBHOOKD_ALLOWED_CIDRS: "127.0.0.0/8",
    WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY,
    WEBHOOKD_ENCRYPTION_KEY: TEST_ENCRYPTION_KEY,
    WEBHOOKD_LOG_LEVEL: "warn",
    ...env,
  });
  const app = await startWebhookd(config, {
    roles,
    logger: createLogger(config.logLevel, "webhookd-test"),
    dispatcherTimings: { leaseTtlMs: 3_000, leaseIntervalMs: 500, sweepIntervalMs: 500, sweepGraceMs: 500 },
    ...extra,
  });
  return { app, config, url: app.url! };
}

/** fetch against the REST API with a bearer key. */
export function restClient(baseUrl: string, apiKey: string, tenantId?: string) {
  return (method: string, path: string, body?: unknown) =>
    fetchJson(`${baseUrl}${path}`, {
      method,
      headers: authHeaders(apiKey, tenantId),
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
}

/** Connect's JSON protocol over fetch, as any HTTP client calls it: `rpc("EventService", "PublishEvent", {...})`. */
export function connectClient(baseUrl: string, apiKey: string, tenantId?: string) {
  return (service: string, method: string, body: unknown) =>
    fetchJson(`${baseUrl}/webhook.v1.${service}/${method}`, { method: "POST", headers: authHeaders(apiKey, tenantId), body: JSON.stringify(body) });
}

function authHeaders(apiKey: string, tenantId: string | undefined): Record<string, string> {
  return { authorization: `Bearer ${apiKey}`, "content-type": "application/json", ...(tenantId ? { "x-tenant-id": tenantId } : {}) };
}

/** The status and the body, parsed when it is JSON. */
async function fetchJson(url: string, init: RequestInit): Promise<{ status: number; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) };
  } catch {
    return { status: res.status, body: text };
  }
}
