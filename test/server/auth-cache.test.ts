// The API key cache of one process: a key revoked here is refused at once here, even when a lookup of it
// that began before the revocation answers after it; and any rate limit lets a request through. Real
// Postgres; a plugin holds back the answer of one key lookup, as a slow connection or a busy event loop does.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryId, QueryResult, RootOperationNode, UnknownRow } from "kysely";
import { ConnectError } from "@connectrpc/connect";
import { createAuthenticator, generateApiKey, hashApiKey } from "../../src/server/auth.js";
import { insertApiKey, revokeApiKey } from "../../src/store/api-keys.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import { suiteStore } from "../support/store.js";

const suite = suiteStore("postgres", "auth_cache", { poolSize: 2 });

/** Holds back the answer of the next api_keys lookup once armed, until `release`. */
function holdingPlugin() {
  const held = new Set<QueryId>();
  const state = { armed: false, ran: undefined as (() => void) | undefined, release: undefined as (() => void) | undefined };
  const plugin: KyselyPlugin = {
    transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
      if (state.armed && JSON.stringify(args.node).includes('"api_keys"')) {
        state.armed = false;
        held.add(args.queryId);
      }
      return args.node;
    },
    async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
      if (held.delete(args.queryId)) await new Promise<void>((resolve) => ((state.release = resolve), state.ran?.()));
      return args.result;
    },
  };
  return { plugin, state };
}

async function newKey(): Promise<{ id: string; token: string }> {
  const token = generateApiKey();
  const id = `key_${Math.random().toString(36).slice(2, 12).padEnd(10, "0")}`;
  await insertApiKey(suite().db, { id, tenant_id: DEFAULT_TENANT_ID, key_hash: hashApiKey(token), admin: false });
  return { id, token };
}

const bearer = (token: string) => new Headers({ authorization: `Bearer ${token}` });

async function status(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return "ok";
  } catch (err) {
    return ConnectError.from(err).code === 16 ? "unauthenticated" : String(err);
  }
}

test("a key revoked in this process is refused at once, even when a lookup from before the revoke answers after it", async () => {
  const { plugin, state } = holdingPlugin();
  const auth = createAuthenticator({ db: suite().db.withPlugin(plugin), bootstrapAdminKey: undefined, rateLimit: 0 });
  const key = await newKey();
  // A request with the key is being authenticated: its lookup has run, its answer is on its way.
  const lookupRan = new Promise<void>((resolve) => (state.ran = resolve));
  state.armed = true;
  const inFlight = status(auth.authenticate(bearer(key.token)));
  await lookupRan;
  // Meanwhile the key is revoked in this process, as AdminService.RevokeApiKey does.
  await revokeApiKey(suite().db, key.id);
  auth.forget();
  state.release!();
  assert.equal(await inFlight, "ok", "the request that began before the revoke may go through");
  assert.equal(await status(auth.authenticate(bearer(key.token))), "unauthenticated", "a request after the revoke is refused");
});

test("a rate limit under one request in two seconds still lets a fresh key's first request through", async () => {
  const auth = createAuthenticator({ db: suite().db, bootstrapAdminKey: undefined, rateLimit: 0.4 });
  const key = await newKey();
  assert.equal(await status(auth.authenticate(bearer(key.token))), "ok");
});
