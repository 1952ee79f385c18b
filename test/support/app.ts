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
  return async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${baseUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${apiKey}`,
        "content-type": "application/json",
        ...(tenantId ? { "x-tenant-id": tenantId } : {}),
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return { status: res.status, body: json };
  };
}
