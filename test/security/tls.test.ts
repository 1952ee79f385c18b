import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto, { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { createTestDatabase } from '../support/postgres.js';
import { startTestApp, restClient, TEST_ADMIN_KEY } from '../support/app.js';
import { verifyDelivery, type Received } from '../support/receiver.js';
import type { Resolver } from '../../src/dispatcher/guarded-lookup.js';
import { eventually, sleep } from '../support/wait.js';

/**
 * TLS verification of deliveries, end to end: a throwaway PKI made with `openssl`, HTTPS receivers
 * on 127.0.0.1 behind the made-up name receiver.test, and webhookd with and without WEBHOOKD_CA_FILE.
 */

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const NAME = 'receiver.test';


/** receiver.test is 127.0.0.1; every other name does not exist. */
const resolve: Resolver = async (hostname) => {
  if (hostname.toLowerCase().replace(/\.$/, '') === NAME) return [{ address: '127.0.0.1', family: 4 }];
  throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND', hostname });
};

// ---------------------------------------------------------------------------------------------
// A throwaway PKI (OpenSSL 3.0 has no -not_before/-not_after on req/x509, but `openssl ca` takes
// -startdate/-enddate, which is how the expired leaf gets a validity entirely in the past).

interface Pki {
  dir: string;
  caPem: string;
  caFile: string;
  /** A second CA, standing in for the "system" trust store in the NODE_EXTRA_CA_CERTS test. */
  otherCaFile: string;
  leaf: { key: string; cert: string };
  expired: { key: string; cert: string };
  selfSigned: { key: string; cert: string };
  wrongName: { key: string; cert: string };
  otherCaLeaf: { key: string; cert: string };
  /** A leaf issued by an intermediate of the test CA; `cert` is the chain leaf + intermediate. */
  chained: { key: string; cert: string };
}

const OPENSSL_CNF = `
[ req ]
distinguished_name = dn
[ dn ]
[ ca ]
default_ca = testca
[ testca ]
database = ca-db/index.txt
new_certs_dir = ca-db
serial = ca-db/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
x509_extensions = leaf_ext
[ any ]
commonName = supplied
[ leaf_ext ]
subjectAltName = DNS:${NAME}
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
`;

function makePki(): Pki {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'webhookd-tls-'));
  const file = (name: string) => path.join(dir, name);
  const read = (name: string) => fs.readFileSync(file(name), 'utf8');
  fs.writeFileSync(file('openssl.cnf'), OPENSSL_CNF);
  fs.mkdirSync(file('ca-db'));
  fs.writeFileSync(file('ca-db/index.txt'), '');
  fs.writeFileSync(file('ca-db/serial'), `${randomBytes(8).toString('hex')}\n`);
  const openssl = (...args: string[]) =>
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OPENSSL_CONF: file('openssl.cnf') } });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const serial = () => `0x${randomBytes(8).toString('hex')}`;
  const leafExt = (dns: string) => {
    const name = `ext-${dns}.cnf`;
    fs.writeFileSync(file(name), `subjectAltName=DNS:${dns}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`);
    return name;
  };
  const makeCa = (base: string, cn: string) =>
    openssl('req', '-config', 'openssl.cnf', '-x509', ...ec, '-keyout', `${base}.key`, '-out', `${base}.pem`, '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const makeLeaf = (base: string, ca: string, dns: string) => {
    openssl('req', '-config', 'openssl.cnf', '-new', ...ec, '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${dns}`);
    openssl('x509', '-req', '-in', `${base}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-set_serial', serial(), '-days', '2',
      '-extfile', leafExt(dns), '-out', `${base}.pem`);
  };

  makeCa('ca', 'webhookd test CA');
  makeLeaf('leaf', 'ca', NAME);
  makeLeaf('wrong', 'ca', 'other.test');
  // Expired: the same CA, validity January 2020.
  openssl('req', '-config', 'openssl.cnf', '-new', ...ec, '-keyout', 'expired.key', '-out', 'expired.csr', '-subj', `/CN=${NAME}`);
  openssl('ca', '-config', 'openssl.cnf', '-batch', '-notext', '-cert', 'ca.pem', '-keyfile', 'ca.key', '-in', 'expired.csr', '-out', 'expired.pem',
    '-startdate', '20200101000000Z', '-enddate', '20200201000000Z');
  openssl('req', '-config', 'openssl.cnf', '-x509', ...ec, '-keyout', 'self.key', '-out', 'self.pem', '-days', '2', '-subj', `/CN=${NAME}`,
    '-addext', `subjectAltName=DNS:${NAME}`);
  // An intermediate CA under the test CA, and a leaf it issued (served with the intermediate).
  openssl('req', '-config', 'openssl.cnf', '-new', ...ec, '-keyout', 'int.key', '-out', 'int.csr', '-subj', '/CN=webhookd test intermediate');
  fs.writeFileSync(file('ext-int.cnf'), 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n');
  openssl('x509', '-req', '-in', 'int.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', serial(), '-days', '2', '-extfile', 'ext-int.cnf', '-out', 'int.pem');
  makeLeaf('chained', 'int', NAME);
  makeCa('other-ca', 'webhookd other test CA');
  makeLeaf('other-leaf', 'other-ca', NAME);

  const pair = (base: string) => ({ key: read(`${base}.key`), cert: read(`${base}.pem`) });
  return {
    dir,
    caPem: read('ca.pem'),
    caFile: file('ca.pem'),
    otherCaFile: file('other-ca.pem'),
    leaf: pair('leaf'),
    expired: pair('expired'),
    selfSigned: pair('self'),
    wrongName: pair('wrong'),
    otherCaLeaf: pair('other-leaf'),
    chained: { key: read('chained.key'), cert: read('chained.pem') + read('int.pem') },
  };
}

// ---------------------------------------------------------------------------------------------
// HTTPS receivers

interface HttpsReceiver {
  port: number;
  url(p: string): string;
  received: (Received & { protocol: string | null })[];
  tlsErrors: string[];
  close(): Promise<void>;
}

async function startHttpsReceiver(options: https.ServerOptions): Promise<HttpsReceiver> {
  const received: HttpsReceiver['received'] = [];
  const tlsErrors: string[] = [];
  const server = https.createServer(options, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({
        path: req.url ?? '/',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        at: Date.now(),
        protocol: (req.socket as tls.TLSSocket).getProtocol(),
      });
      res.end('ok');
    });
  });
  server.on('tlsClientError', (err) => tlsErrors.push(err.message));
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: (p) => `https://${NAME}:${port}${p}`,
    received,
    tlsErrors,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}

/** Does a server really complete a TLS 1.1 handshake? (Node's OpenSSL 3 may refuse to.) */
async function speaksTls11(port: number, ca: string): Promise<string> {
  return new Promise((ok, fail) => {
    const socket = tls.connect(
      { host: '127.0.0.1', port, servername: NAME, ca: [ca], minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' },
      () => {
        const protocol = socket.getProtocol() ?? 'unknown';
        socket.end();
        ok(protocol);
      },
    );
    socket.once('error', fail);
  });
}

// ---------------------------------------------------------------------------------------------
// webhookd

type Rest = ReturnType<typeof restClient>;

interface Outcome {
  webhookId: string;
  secret: string;
  eventId: string;
  delivery: { delivery_id: string; status: string; attempts: number; next_attempt_at?: string };
  attempt: { error?: string; response_code?: number };
}

let eventSeq = 0;

/** Registers a webhook for `url`, publishes one event to it and waits for its first attempt. */
async function deliverOnce(rest: Rest, url: string): Promise<Outcome> {
  const eventType = `tls.case.c${++eventSeq}`;
  const created = await rest('POST', '/webhooks', { url, event_types: [eventType] });
  assert.equal(created.status, 201, `registering ${url}: ${JSON.stringify(created.body)}`);
  const published = await rest('POST', '/events', { event_type: eventType, payload: { url } });
  assert.equal(published.status, 201, JSON.stringify(published.body));
  const webhookId: string = created.body.webhook_id;
  const list = await eventually(
    () => rest('GET', `/webhooks/${webhookId}/deliveries`),
    (r) => r.status === 200 && r.body.deliveries.length === 1 && r.body.deliveries[0].attempts >= 1,
    `the first attempt to ${url}`,
  );
  const delivery = list.body.deliveries[0];
  const attempts = await rest('GET', `/deliveries/${delivery.delivery_id}/attempts`);
  assert.equal(attempts.status, 200);
  return { webhookId, secret: created.body.secret, eventId: published.body.event_id, delivery, attempt: attempts.body.attempts[0] };
}

function assertTlsFailure(t: TestContext, outcome: Outcome, expected: RegExp, receiver: HttpsReceiver, p: string): void {
  t.diagnostic(`attempt error: ${outcome.attempt.error}`);
  assert.notEqual(outcome.delivery.status, 'succeeded');
  assert.equal(outcome.attempt.response_code ?? undefined, undefined, 'no HTTP response: the handshake failed');
  assert.match(outcome.attempt.error ?? '', expected);
  assert.doesNotMatch(outcome.attempt.error ?? '', /\bblocked\b/, 'a TLS failure is not an SSRF block');
  assert.equal(receiver.received.filter((r) => r.path === p).length, 0, 'no request reached the receiver');
}

function baseEnv(databaseUrl: string): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    WEBHOOKD_ALLOWED_CIDRS: '127.0.0.0/8',
    WEBHOOKD_ALLOW_HTTP: 'false',
    // No retries: a failed attempt is final at once (see the test on this below).
    WEBHOOKD_RETRY_SCHEDULE: '',
    WEBHOOKD_DELIVERY_TIMEOUT: '5s',
  };
}

// ---------------------------------------------------------------------------------------------

describe('TLS verification of deliveries', () => {
  let pki: Pki;
  let good: HttpsReceiver;
  let expired: HttpsReceiver;
  let selfSigned: HttpsReceiver;
  let wrongName: HttpsReceiver;
  let tls11: HttpsReceiver;
  let chained: HttpsReceiver;
  const dbs: Awaited<ReturnType<typeof createTestDatabase>>[] = [];
  /** Trusts only the default store. */
  let plain: { app: Awaited<ReturnType<typeof startTestApp>>['app']; rest: Rest };
  /** Also trusts the test CA through WEBHOOKD_CA_FILE. */
  let trusting: { app: Awaited<ReturnType<typeof startTestApp>>['app']; rest: Rest };
  const failures: { what: string; outcome: Outcome }[] = [];

  before(async () => {
    pki = makePki();
    good = await startHttpsReceiver(pki.leaf);
    expired = await startHttpsReceiver(pki.expired);
    selfSigned = await startHttpsReceiver(pki.selfSigned);
    wrongName = await startHttpsReceiver(pki.wrongName);
    chained = await startHttpsReceiver(pki.chained);
    tls11 = await startHttpsReceiver({ ...pki.leaf, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });

    const [dbPlain, dbTrusting] = await Promise.all([createTestDatabase('sec_tls_plain'), createTestDatabase('sec_tls_trust')]);
    dbs.push(dbPlain!, dbTrusting!);
    const [p, t] = await Promise.all([
      startTestApp(baseEnv(dbPlain!.url), ['api', 'dispatcher'], { resolve }),
      startTestApp({ ...baseEnv(dbTrusting!.url), WEBHOOKD_CA_FILE: pki.caFile }, ['api', 'dispatcher'], { resolve }),
    ]);
    plain = { app: p.app, rest: restClient(p.url, TEST_ADMIN_KEY) };
    trusting = { app: t.app, rest: restClient(t.url, TEST_ADMIN_KEY) };
  });

  after(async () => {
    await plain?.app.stop();
    await trusting?.app.stop();
    for (const r of [good, expired, selfSigned, wrongName, tls11, chained]) await r?.close();
    for (const db of dbs) await db.drop();
    if (pki) fs.rmSync(pki.dir, { recursive: true, force: true });
  });

  test('the PKI is what it claims to be', () => {
    const ca = new crypto.X509Certificate(pki.caPem);
    const leaf = new crypto.X509Certificate(pki.leaf.cert);
    const old = new crypto.X509Certificate(pki.expired.cert);
    assert.ok(ca.ca);
    assert.ok(leaf.checkIssued(ca) && leaf.verify(ca.publicKey));
    assert.equal(leaf.subjectAltName, `DNS:${NAME}`);
    assert.ok(old.checkIssued(ca) && old.verify(ca.publicKey));
    assert.ok(Date.parse(old.validTo) < Date.now(), `expired leaf ends ${old.validTo}`);
    assert.equal(old.subjectAltName, `DNS:${NAME}`);
  });

  test('(a) a CA-signed leaf without WEBHOOKD_CA_FILE fails: issuer unknown', async (t) => {
    // The server sends the leaf alone, so OpenSSL words it "unable to verify the first certificate".
    const outcome = await deliverOnce(plain.rest, good.url('/a'));
    assertTlsFailure(t, outcome, /unable to verify the first certificate|UNABLE_TO_VERIFY_LEAF_SIGNATURE/, good, '/a');
    failures.push({ what: '(a) untrusted CA', outcome });
  });

  test('(a2) leaf + intermediate without WEBHOOKD_CA_FILE fails: unable to get local issuer certificate', async (t) => {
    const outcome = await deliverOnce(plain.rest, chained.url('/a2'));
    assertTlsFailure(t, outcome, /unable to get local issuer certificate|UNABLE_TO_GET_ISSUER_CERT_LOCALLY/, chained, '/a2');
    failures.push({ what: '(a2) untrusted root of a chain', outcome });
  });

  test('(b) with WEBHOOKD_CA_FILE naming the CA the same receiver succeeds with a signed request', async () => {
    const outcome = await deliverOnce(trusting.rest, good.url('/b'));
    assert.equal(outcome.delivery.status, 'succeeded', JSON.stringify(outcome));
    assert.equal(outcome.attempt.response_code, 200);
    const got = good.received.filter((r) => r.path === '/b');
    assert.equal(got.length, 1);
    const body = verifyDelivery(got[0]!, outcome.secret);
    assert.equal(body.event_id, outcome.eventId);
    assert.ok(got[0]!.protocol === 'TLSv1.2' || got[0]!.protocol === 'TLSv1.3', `negotiated ${got[0]!.protocol}`);
  });

  test('(b2) with WEBHOOKD_CA_FILE naming the root, a leaf + intermediate chain succeeds', async () => {
    const outcome = await deliverOnce(trusting.rest, chained.url('/b2'));
    assert.equal(outcome.delivery.status, 'succeeded', JSON.stringify(outcome));
    const got = chained.received.filter((r) => r.path === '/b2');
    assert.equal(got.length, 1);
    assert.equal(verifyDelivery(got[0]!, outcome.secret).event_id, outcome.eventId);
  });

  test('(c) a self-signed leaf fails with a certificate error, whatever extra CA is trusted', async (t) => {
    for (const [name, side] of [['plain', plain], ['trusting', trusting]] as const) {
      const p = `/c-${name}`;
      const outcome = await deliverOnce(side.rest, selfSigned.url(p));
      assertTlsFailure(t, outcome, /self[- ]signed certificate|DEPTH_ZERO_SELF_SIGNED_CERT/, selfSigned, p);
      failures.push({ what: `(c) self-signed (${name})`, outcome });
    }
  });

  test('(d) an expired leaf from the trusted CA fails: certificate has expired', async (t) => {
    const outcome = await deliverOnce(trusting.rest, expired.url('/d'));
    assertTlsFailure(t, outcome, /certificate has expired|CERT_HAS_EXPIRED/, expired, '/d');
    failures.push({ what: '(d) expired', outcome });
  });

  test('(e) a server that only speaks TLS 1.1 fails (minVersion TLSv1.2)', async (t) => {
    let protocol: string;
    try {
      protocol = await speaksTls11(tls11.port, pki.caPem);
    } catch (err) {
      t.skip(`Node's OpenSSL would not run a TLS 1.1 server even at SECLEVEL=0: ${(err as Error).message}`);
      return;
    }
    assert.equal(protocol, 'TLSv1.1', 'the test server really speaks TLS 1.1');
    const outcome = await deliverOnce(trusting.rest, tls11.url('/e'));
    assertTlsFailure(t, outcome, /protocol version|unsupported protocol|wrong version number/i, tls11, '/e');
    failures.push({ what: '(e) TLS 1.1 only', outcome });
  });

  test('(f) a leaf from the trusted CA for another name fails: hostname mismatch', async (t) => {
    const outcome = await deliverOnce(trusting.rest, wrongName.url('/f'));
    assertTlsFailure(t, outcome, /does not match|ERR_TLS_CERT_ALTNAME_INVALID/, wrongName, '/f');
    failures.push({ what: '(f) wrong name', outcome });
  });

  test('with WEBHOOKD_RETRY_SCHEDULE="" (no retries) each failed attempt is final', () => {
    assert.ok(failures.length >= 7, `the failure cases ran (${failures.length})`);
    const notFinal = failures
      .filter(({ outcome }) => outcome.delivery.status !== 'failed')
      .map(({ what, outcome }) => `${what}: ${outcome.delivery.status}, next attempt ${outcome.delivery.next_attempt_at ?? '-'}`);
    assert.deepEqual(notFinal, [], 'an empty retry schedule means no retries (src/core/durations.ts parseRetrySchedule)');
  });

  describe('WEBHOOKD_CA_FILE adds to the default trust store rather than replacing it', () => {
    let other: HttpsReceiver;
    const children: ChildProcess[] = [];

    before(async () => {
      other = await startHttpsReceiver(pki.otherCaLeaf);
    });

    after(async () => {
      for (const child of children) {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((ok) => child.once('exit', ok));
          child.kill('SIGTERM');
          await Promise.race([exited, sleep(5_000)]);
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        }
      }
      await other?.close();
    });

    function childEnv(extra: Record<string, string>): Record<string, string | undefined> {
      const env: Record<string, string | undefined> = { ...process.env, NODE_EXTRA_CA_CERTS: pki.otherCaFile, ...extra };
      delete env.NODE_TEST_CONTEXT;
      return env;
    }

    /**
     * Control: a plain TLS client in a process started like the webhookd child trusts the other CA.
     * Asynchronous on purpose: the receiver it talks to runs in this process.
     */
    async function defaultStoreTrustsOther(): Promise<string> {
      const script = `
        const s = require('node:tls').connect({ host: '127.0.0.1', port: Number(process.env.T_PORT), servername: ${JSON.stringify(NAME)} }, () => {
          process.stdout.write('trusted'); s.end();
        });
        s.on('error', (e) => { process.stdout.write('refused: ' + e.message); });
      `;
      const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], {
        env: childEnv({ T_PORT: String(other.port) }),
        encoding: 'utf8',
        timeout: 10_000,
      });
      return stdout;
    }

    /**
     * webhookd in a child process whose default trust store holds the other CA (NODE_EXTRA_CA_CERTS
     * extends Node's default store at start-up, standing in for a publicly trusted root).
     */
    async function startChild(env: Record<string, string>): Promise<Rest> {
      const script = `
        const { startTestApp } = await import(process.env.T_APP_MODULE);
        const resolve = async (h) => (h === ${JSON.stringify(NAME)} ? [{ address: '127.0.0.1', family: 4 }] : []);
        const { app, url } = await startTestApp(JSON.parse(process.env.T_ENV), ['api', 'dispatcher'], { resolve });
        process.stdout.write('READY ' + url + '\\n');
        process.on('SIGTERM', () => app.stop().then(() => process.exit(0), () => process.exit(1)));
      `;
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: ROOT,
        // startTestApp reads its configuration from the object it is given, as loadConfig(process.env) would
        // read NODE_EXTRA_CA_CERTS from the real environment.
        env: childEnv({
          T_APP_MODULE: pathToFileURL(path.join(ROOT, 'test/support/app.ts')).href,
          T_ENV: JSON.stringify({ NODE_EXTRA_CA_CERTS: pki.otherCaFile, ...env }),
        }),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let out = '';
      child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
      const url = await eventually(
        async () => {
          if (child.exitCode !== null) throw new Error(`child webhookd exited (${child.exitCode}):\n${out}`);
          return /READY (\S+)/.exec(out)?.[1];
        },
        (u) => u !== undefined,
        'the child webhookd to start',
        30_000,
      );
      return restClient(url!, TEST_ADMIN_KEY);
    }

    test('a receiver the default store trusts stays trusted when WEBHOOKD_CA_FILE is set', async () => {
      // Control: a process started this way trusts the other CA by default.
      assert.equal(await defaultStoreTrustsOther(), 'trusted');

      const dbCaFile = await createTestDatabase('sec_tls_cafile');
      dbs.push(dbCaFile);
      const withCaFile = await startChild({ ...baseEnv(dbCaFile.url), WEBHOOKD_CA_FILE: pki.caFile });

      // WEBHOOKD_CA_FILE works for its own CA …
      const own = await deliverOnce(withCaFile, good.url('/g-own'));
      assert.equal(own.delivery.status, 'succeeded', `CA file's own CA: ${JSON.stringify(own.attempt)}`);

      // … and must not take away what the default store trusted ("beside the system's", src/config.ts).
      const beside = await deliverOnce(withCaFile, other.url('/g-beside'));
      assert.equal(
        beside.delivery.status,
        'succeeded',
        `with WEBHOOKD_CA_FILE set, a receiver trusted by the default store failed: ${beside.attempt.error}`,
      );
    });
  });
});
