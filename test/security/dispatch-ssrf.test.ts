import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import pg from 'pg';
import { createTestDatabase } from '../support/postgres.js';
import { startTestApp, restClient, TEST_ADMIN_KEY } from '../support/app.js';
import { startReceiver, verifyDelivery } from '../support/receiver.js';
import type { Resolver } from '../../src/dispatcher/guarded-lookup.js';
import { eventually } from '../support/wait.js';

/**
 * The dispatcher's connect-time SSRF guard, end to end: a real webhookd (API + dispatcher) on a real
 * Postgres, a scripted DNS resolver that plays a rebinding attacker, and a receiver on loopback that
 * must never hear from it.
 *
 * Safety: the resolver *answers* with internal addresses, so a broken guard would make this process
 * open sockets to them. Every TCP connect this process makes goes through the loopback-only net
 * below, which refuses (and records) anything that is not 127.0.0.0/8 or ::1 before a packet leaves.
 * A refusal there shows up as an ECONNREFUSED attempt, never as "blocked", so it fails the test.
 */

// ---------------------------------------------------------------------------------------------
// Loopback-only safety net, at the TCP handle: below net.connect, undici and any lookup hook.

type Connect = { address: string; port: number };
const connects: Connect[] = [];
const refusedConnects: Connect[] = [];

const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
LOOPBACK.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

function isLoopback(address: string): boolean {
  const family = net.isIP(address);
  if (family === 4) return LOOPBACK.check(address, 'ipv4');
  if (family === 6) return LOOPBACK.check(address, 'ipv6');
  return false;
}

function installLoopbackOnlyNet(): void {
  // process.binding is deprecated but still hands out the TCP handle class net.Socket uses.
  const binding = (process as unknown as { binding(name: string): { TCP: { prototype: Record<string, unknown> } } }).binding('tcp_wrap');
  const proto = binding.TCP.prototype;
  for (const method of ['connect', 'connect6']) {
    const original = proto[method] as (...args: unknown[]) => number;
    assert.equal(typeof original, 'function', `TCP.prototype.${method} is missing: cannot install the loopback-only net`);
    proto[method] = function (this: unknown, req: unknown, address: string, port: number, ...rest: unknown[]): number {
      const entry = { address: String(address), port: Number(port) };
      connects.push(entry);
      if (!isLoopback(entry.address)) {
        refusedConnects.push(entry);
        return -os.constants.errno.ECONNREFUSED;
      }
      return original.call(this, req, address, port, ...rest);
    };
  }
}

installLoopbackOnlyNet();

// ---------------------------------------------------------------------------------------------
// Helpers


const PUBLIC_V4 = '93.184.216.34';
const PUBLIC_V6 = '2606:2800:220:1:248:1893:25c8:1946';

/** A DNS server under the test's control; unknown names do not exist. */
function scriptedResolver() {
  const answers = new Map<string, string[]>();
  const calls: { name: string; answered: string[] }[] = [];
  const resolve: Resolver = async (hostname) => {
    const name = hostname.toLowerCase().replace(/\.+$/, '');
    const list = answers.get(name);
    calls.push({ name, answered: list ? [...list] : [] });
    if (!list) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND', hostname });
    return list.map((address) => ({ address, family: net.isIP(address) }));
  };
  return {
    resolve,
    calls,
    set(name: string, list: string[]) {
      answers.set(name, list);
    },
  };
}

type Rest = ReturnType<typeof restClient>;

interface Finished {
  delivery: { delivery_id: string; status: string; attempts: number };
  attempts: { error?: string; response_code?: number }[];
}

/** The webhook's single delivery once it has had an attempt, with that attempt log. */
async function firstAttempt(rest: Rest, webhookId: string, what: string): Promise<Finished> {
  const list = await eventually(
    () => rest('GET', `/webhooks/${webhookId}/deliveries`),
    (r) => r.status === 200 && r.body.deliveries.length === 1 && r.body.deliveries[0].attempts >= 1,
    `an attempt for ${what}`,
  );
  const delivery = list.body.deliveries[0];
  const attempts = await rest('GET', `/deliveries/${delivery.delivery_id}/attempts`);
  assert.equal(attempts.status, 200);
  return { delivery, attempts: attempts.body.attempts };
}

async function createWebhook(rest: Rest, url: string, eventType: string): Promise<{ id: string; secret: string }> {
  const res = await rest('POST', '/webhooks', { url, event_types: [eventType] });
  assert.ok(res.status === 201 || res.status === 200, `registering ${url}: ${res.status} ${JSON.stringify(res.body)}`);
  return { id: res.body.webhook_id, secret: res.body.secret };
}

async function publish(rest: Rest, eventType: string, payload: Record<string, unknown>): Promise<string> {
  const res = await rest('POST', '/events', { event_type: eventType, payload });
  assert.ok(res.status === 201 || res.status === 200, `publishing ${eventType}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.event_id;
}

function assertBlocked(finished: Finished, address: string, what: string): void {
  assert.equal(finished.delivery.status, 'failed', `${what}: a blocked destination fails at once (got ${finished.delivery.status})`);
  assert.equal(finished.delivery.attempts, 1, `${what}: exactly one attempt`);
  assert.equal(finished.attempts.length, 1, `${what}: one attempt logged`);
  const [attempt] = finished.attempts;
  const error = attempt?.error ?? '';
  assert.equal(attempt?.response_code ?? undefined, undefined, `${what}: no HTTP response may exist`);
  assert.match(error, /\bblocked\b/, `${what}: the error says it was blocked: ${error}`);
  assert.ok(error.includes(address), `${what}: the error names ${address}: ${error}`);
}

// ---------------------------------------------------------------------------------------------
// The corpus: addresses a webhook must never reach, IPv4 and IPv6, including IPv6 forms that
// carry an internal IPv4 address. `loopback` marks those a leak would deliver to this machine.

const INTERNAL: { address: string; what: string }[] = [
  { address: '127.0.0.1', what: 'IPv4 loopback' },
  { address: '127.1.2.3', what: 'IPv4 loopback, not .1' },
  { address: '0.0.0.0', what: 'unspecified (reaches this host on Linux)' },
  { address: '0.1.2.3', what: '"this network" 0/8' },
  { address: '10.0.0.1', what: 'RFC 1918 10/8' },
  { address: '10.255.255.254', what: 'RFC 1918 10/8, top' },
  { address: '172.16.0.1', what: 'RFC 1918 172.16/12' },
  { address: '172.31.255.254', what: 'RFC 1918 172.16/12, top' },
  { address: '192.168.0.1', what: 'RFC 1918 192.168/16' },
  { address: '192.168.255.254', what: 'RFC 1918 192.168/16, top' },
  { address: '100.64.0.1', what: 'CGNAT 100.64/10' },
  { address: '100.127.255.254', what: 'CGNAT 100.64/10, top' },
  { address: '169.254.169.254', what: 'cloud metadata (link-local)' },
  { address: '169.254.0.1', what: 'IPv4 link-local' },
  { address: '224.0.0.1', what: 'multicast all-hosts' },
  { address: '239.255.255.250', what: 'multicast SSDP' },
  { address: '255.255.255.255', what: 'limited broadcast' },
  { address: '198.18.0.1', what: 'benchmarking 198.18/15' },
  { address: '198.19.255.254', what: 'benchmarking 198.18/15, top' },
  { address: '192.0.2.1', what: 'TEST-NET-1' },
  { address: '198.51.100.7', what: 'TEST-NET-2' },
  { address: '203.0.113.9', what: 'TEST-NET-3' },
  { address: '240.0.0.1', what: 'reserved 240/4' },
  { address: '250.1.2.3', what: 'reserved 240/4, inside' },
  { address: '192.0.0.170', what: 'IETF protocol assignments (NAT64 discovery)' },
  { address: '192.88.99.1', what: '6to4 relay anycast' },
  { address: '::1', what: 'IPv6 loopback' },
  { address: '::', what: 'IPv6 unspecified' },
  { address: 'fc00::1', what: 'unique local fc00::/7 (fc)' },
  { address: 'fd00::2', what: 'unique local fc00::/7 (fd; this host\'s own ULA)' },
  { address: 'fd12:3456:789a::1', what: 'unique local, random prefix' },
  { address: 'fe80::1', what: 'IPv6 link-local' },
  { address: 'febf:ffff::1', what: 'IPv6 link-local, top of fe80::/10' },
  { address: 'fec0::1', what: 'deprecated site-local' },
  { address: 'ff02::1', what: 'IPv6 multicast all-nodes' },
  { address: 'ff05::1:3', what: 'IPv6 multicast site-local DHCP' },
  { address: '::ffff:10.0.0.1', what: 'IPv4-mapped RFC 1918' },
  { address: '::ffff:127.0.0.1', what: 'IPv4-mapped loopback' },
  { address: '::ffff:7f00:2', what: 'IPv4-mapped loopback, hex spelling' },
  { address: '::ffff:169.254.169.254', what: 'IPv4-mapped metadata' },
  { address: '::127.0.0.1', what: 'deprecated IPv4-compatible loopback' },
  { address: '::ffff:0:7f00:1', what: 'IPv4-translated (RFC 6145) loopback' },
  { address: '64:ff9b::a9fe:a9fe', what: 'NAT64 of metadata' },
  { address: '64:ff9b::7f00:1', what: 'NAT64 of loopback' },
  { address: '64:ff9b:1::a00:1', what: 'local-use NAT64' },
  { address: '2002:7f00:1::', what: '6to4 of loopback' },
  { address: '2002:a9fe:a9fe::1', what: '6to4 of metadata' },
  { address: '2001:0:4136:e378:8000:63bf:80ff:fffe', what: 'Teredo whose client is 127.0.0.1' },
  { address: '2001:db8::1', what: 'IPv6 documentation' },
  { address: '100::1', what: 'IPv6 discard-only' },
];

// ---------------------------------------------------------------------------------------------

describe('dispatch-time SSRF guard', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let leak: Awaited<ReturnType<typeof startReceiver>>;
  /** Listens on [::1] at the leak receiver's port, so that a leak to ::1 is heard too. */
  let leak6: http.Server | undefined;
  const leak6Received: string[] = [];
  let app: Awaited<ReturnType<typeof startTestApp>>['app'];
  let rest: Rest;
  const dns = scriptedResolver();

  before(async () => {
    db = await createTestDatabase('sec_ssrf');
    leak = await startReceiver();
    leak6 = http.createServer((req, res) => {
      leak6Received.push(req.url ?? '/');
      res.end('ok');
    });
    const listening = await new Promise<boolean>((resolve) => {
      leak6!.once('error', () => resolve(false));
      leak6!.listen(leak.port, '::1', () => resolve(true));
    });
    if (!listening) leak6 = undefined;
    const started = await startTestApp(
      { DATABASE_URL: db.url, WEBHOOKD_ALLOWED_CIDRS: '', WEBHOOKD_ALLOW_HTTP: 'true' },
      ['api', 'dispatcher'],
      { resolve: dns.resolve },
    );
    app = started.app;
    rest = restClient(started.url, TEST_ADMIN_KEY);
  });

  after(async () => {
    await app?.stop();
    await leak?.close();
    await new Promise<void>((resolve) => (leak6 ? leak6.close(() => resolve()) : resolve()));
    await db?.drop();
  });

  describe('DNS rebinding: public at registration, internal at dispatch', () => {
    const hooks: { name: string; address: string; what: string; webhookId: string; eventType: string }[] = [];

    test(`the corpus holds at least 40 internal addresses (${INTERNAL.length})`, () => {
      assert.ok(INTERNAL.length >= 40);
      assert.equal(new Set(INTERNAL.map((c) => c.address)).size, INTERNAL.length, 'no duplicates');
      assert.ok(INTERNAL.some((c) => net.isIPv4(c.address)) && INTERNAL.some((c) => net.isIPv6(c.address)));
    });

    test('every rebinding name registers while it resolves to a public address', async () => {
      for (const [i, { address, what }] of INTERNAL.entries()) {
        const name = `h${i}.rebind.test`;
        dns.set(name, [i % 2 === 0 ? PUBLIC_V4 : PUBLIC_V6]);
        // Every case aims at the leak receiver's port, so a leak to a loopback address is heard.
        const eventType = `ssrf.rebind.h${i}`;
        const { id } = await createWebhook(rest, `http://${name}:${leak.port}/leak/h${i}`, eventType);
        hooks.push({ name, address, what, webhookId: id, eventType });
      }
      assert.equal(hooks.length, INTERNAL.length);
      // Registration resolved each name (and never connected anywhere but the API and Postgres).
      for (const { name } of hooks) assert.ok(dns.calls.some((c) => c.name === name), `${name} was checked at registration`);
    });

    test('after the flip, every delivery fails at once as blocked, naming the internal address', async (t) => {
      assert.equal(hooks.length, INTERNAL.length, 'registration ran');
      const callsBefore = dns.calls.length;
      for (const { name, address } of hooks) dns.set(name, [address]);
      for (const { eventType } of hooks) await publish(rest, eventType, { probe: eventType });

      for (const hook of hooks) {
        await t.test(`${hook.address} (${hook.what})`, async (st) => {
          const finished = await firstAttempt(rest, hook.webhookId, hook.name);
          st.diagnostic(`attempt error: ${finished.attempts[0]?.error}`);
          assertBlocked(finished, hook.address, hook.name);
          assert.ok(
            dns.calls.slice(callsBefore).some((c) => c.name === hook.name && c.answered.includes(hook.address)),
            `the dispatcher resolved ${hook.name} again at connect time`,
          );
        });
      }
    });
  });

  describe('internal IP literals written into the row after registration', () => {
    const literals = () => [
      { url: `http://127.0.0.1:${leak.port}/leak/literal-v4`, address: '127.0.0.1' },
      { url: `http://[::ffff:127.0.0.1]:${leak.port}/leak/literal-mapped`, address: '127.0.0.1' },
      { url: `http://2130706433:${leak.port}/leak/literal-decimal`, address: '127.0.0.1' },
      { url: `http://0x7f.1:${leak.port}/leak/literal-hex`, address: '127.0.0.1' },
      { url: `http://0177.0.0.1:${leak.port}/leak/literal-octal`, address: '127.0.0.1' },
      { url: `http://127.0.0.1..:${leak.port}/leak/literal-dots`, address: '127.0.0.1' },
      { url: `http://[::1]:${leak.port}/leak/literal-v6`, address: '::1' },
      { url: `http://[0:0:0:0:0:ffff:7f00:1]:${leak.port}/leak/literal-mapped-long`, address: '127.0.0.1' },
      { url: `http://169.254.169.254/latest/meta-data/`, address: '169.254.169.254' },
      { url: `http://[64:ff9b::a9fe:a9fe]/latest/meta-data/`, address: '169.254.169.254' },
    ];

    test('each attempt is blocked before any connection', async (t) => {
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      const cases: { url: string; address: string; webhookId: string }[] = [];
      try {
        for (const [i, c] of literals().entries()) {
          const eventType = `ssrf.literal.l${i}`;
          // A public literal passes registration; it is never contacted because the row changes first.
          const { id } = await createWebhook(rest, `https://${PUBLIC_V4}/x`, eventType);
          // Models a policy change after registration (or a write that bypassed the API).
          const updated = await client.query('update webhooks set url = $1 where id = $2', [c.url, id]);
          assert.equal(updated.rowCount, 1);
          cases.push({ ...c, webhookId: id });
          await publish(rest, eventType, { literal: c.url });
        }
      } finally {
        await client.end();
      }
      for (const c of cases) {
        await t.test(c.url, async (st) => {
          const finished = await firstAttempt(rest, c.webhookId, c.url);
          st.diagnostic(`attempt error: ${finished.attempts[0]?.error}`);
          assertBlocked(finished, c.address, c.url);
        });
      }
    });
  });

  describe('a name with a public and a private address', () => {
    test('is refused at registration (400), nothing written, nothing connected', async (t) => {
      const mixes: { name: string; answers: string[]; bad: string }[] = [
        { name: 'mixed-a.rebind.test', answers: [PUBLIC_V4, '10.0.0.5'], bad: '10.0.0.5' },
        { name: 'mixed-b.rebind.test', answers: ['169.254.169.254', PUBLIC_V4], bad: '169.254.169.254' },
        { name: 'mixed-c.rebind.test', answers: [PUBLIC_V6, 'fd00::1'], bad: 'fd00::1' },
        { name: 'mixed-d.rebind.test', answers: [PUBLIC_V4, PUBLIC_V6, '::ffff:127.0.0.1'], bad: '::ffff:127.0.0.1' },
      ];
      const before = await rest('GET', '/webhooks');
      const connectsBefore = connects.length;
      for (const m of mixes) {
        await t.test(m.answers.join(' + '), async () => {
          dns.set(m.name, m.answers);
          const res = await rest('POST', '/webhooks', { url: `http://${m.name}:${leak.port}/leak/mixed`, event_types: ['ssrf.mixed'] });
          assert.equal(res.status, 400, JSON.stringify(res.body));
          assert.match(res.body.error.message, /blocked/);
          assert.ok(res.body.error.message.includes(m.bad), `names ${m.bad}: ${res.body.error.message}`);
        });
      }
      const afterList = await rest('GET', '/webhooks');
      assert.equal(afterList.body.webhooks.length, before.body.webhooks.length, 'no webhook was written');
      const outbound = connects.slice(connectsBefore).filter((c) => c.port !== Number(new URL(app.url!).port) && c.port !== 5432);
      assert.deepEqual(outbound, [], 'registration connected nowhere but the API and Postgres');
    });
  });

  describe('with WEBHOOKD_ALLOWED_CIDRS=127.0.0.0/8', () => {
    let db2: Awaited<ReturnType<typeof createTestDatabase>>;
    let good: Awaited<ReturnType<typeof startReceiver>>;
    let app2: Awaited<ReturnType<typeof startTestApp>>['app'];
    let rest2: Rest;
    const dns2 = scriptedResolver();

    before(async () => {
      db2 = await createTestDatabase('sec_ssrf_exempt');
      good = await startReceiver();
      const started = await startTestApp(
        { DATABASE_URL: db2.url, WEBHOOKD_ALLOWED_CIDRS: '127.0.0.0/8', WEBHOOKD_ALLOW_HTTP: 'true' },
        ['api', 'dispatcher'],
        { resolve: dns2.resolve },
      );
      app2 = started.app;
      rest2 = restClient(started.url, TEST_ADMIN_KEY);
    });

    after(async () => {
      await app2?.stop();
      await good?.close();
      await db2?.drop();
    });

    test('a rebinding name that turns to 127.0.0.1 is delivered: the exemption applies at dispatch', async () => {
      const name = 'ok.rebind.test';
      dns2.set(name, [PUBLIC_V4]);
      const { id, secret } = await createWebhook(rest2, `http://${name}:${good.port}/exempt`, 'ssrf.exempt');
      dns2.set(name, ['127.0.0.1']);
      const eventId = await publish(rest2, 'ssrf.exempt', { exempt: true });
      const finished = await firstAttempt(rest2, id, name);
      assert.equal(finished.delivery.status, 'succeeded', JSON.stringify(finished));
      assert.equal(finished.attempts[0]?.response_code, 200);
      await good.waitFor(() => good.forPath('/exempt').length === 1, 5_000, 'the exempt delivery');
      const body = verifyDelivery(good.forPath('/exempt')[0]!, secret);
      assert.equal(body.event_id, eventId);
    });

    test('the exemption is narrow: the same flip to 10.0.0.1, 169.254.169.254 or ::1 is still blocked', async () => {
      const cases = [{ address: '10.0.0.1' }, { address: '169.254.169.254' }, { address: '::1' }];
      for (const [i, c] of cases.entries()) {
        const name = `narrow${i}.rebind.test`;
        dns2.set(name, [PUBLIC_V4]);
        const { id } = await createWebhook(rest2, `http://${name}:${leak.port}/leak/narrow${i}`, `ssrf.narrow.n${i}`);
        dns2.set(name, [c.address]);
        await publish(rest2, `ssrf.narrow.n${i}`, {});
        assertBlocked(await firstAttempt(rest2, id, name), c.address, `${name} → ${c.address}`);
      }
    });
  });

  test('no socket ever left loopback, and the leak receiver heard nothing', () => {
    assert.deepEqual(refusedConnects, [], 'connects the loopback-only net refused (the guard let these through)');
    assert.deepEqual(
      connects.filter((c) => c.port === leak.port),
      [],
      'no connection was even attempted to the leak receiver port',
    );
    assert.deepEqual(leak.received.map((r) => r.path), [], 'the leak receiver on 127.0.0.1 got no request');
    assert.deepEqual(leak6Received, [], 'the leak receiver on ::1 got no request');
  });
});
