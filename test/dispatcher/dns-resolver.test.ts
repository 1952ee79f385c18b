// The resolver every connection and every registration check goes through, against a real DNS server
// on a local port: names whose DNS never answers must not hold up anyone else's lookups (getaddrinfo ran
// them on libuv's four-thread pool, where four such names stalled every webhook's new connections), and
// what a server says (addresses of either family, no such name, a private address) reaches the policy.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';
import dnsPacket from 'dns-packet';
import { dnsResolver, parseHosts, parseResolvConf, type Resolver } from '../../src/dispatcher/dns-resolver.js';
import { resolveAndCheck } from '../../src/dispatcher/guarded-lookup.js';
import { createSender } from '../../src/dispatcher/sender.js';
import { startReceiver } from '../support/receiver.js';

/** name → what the server answers; a name under slow.test is never answered. */
const ZONE: Record<string, { A?: string[]; AAAA?: string[] }> = {
  'good.test': { A: ['127.0.0.1'] },
  'both.test': { A: ['93.184.216.34'], AAAA: ['2606:4700::1111'] },
  'v6only.test': { AAAA: ['2606:4700::1111'] },
  'private.test': { A: ['93.184.216.34', '10.0.0.7'] },
  'receiver.svc.test': { A: ['10.96.0.7'] },
  'receiver.default.svc.test': { A: ['10.96.0.8'] },
};

let server: dgram.Socket;
let resolve: Resolver;
let servers: string[];
const queries: string[] = [];

before(async () => {
  server = dgram.createSocket('udp4');
  server.on('message', (message, peer) => {
    const query = dnsPacket.decode(message);
    const question = query.questions![0]!;
    queries.push(`${question.type} ${question.name}`);
    if (question.name.endsWith('slow.test')) return;
    const zone = ZONE[question.name];
    const addresses = question.type === 'A' || question.type === 'AAAA' ? (zone?.[question.type] ?? []) : [];
    // Names under broken.test answer SERVFAIL, under refusing.test REFUSED; unknown names NXDOMAIN.
    const rcode = question.name.endsWith('broken.test') ? 2 : question.name.endsWith('refusing.test') ? 5 : zone ? 0 : 3;
    const answer = dnsPacket.encode({
      type: 'response',
      id: query.id,
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | rcode,
      questions: [question],
      answers: addresses.map((data) => ({ type: question.type as 'A', name: question.name, ttl: 30, data })),
    });
    server.send(answer, peer.port, peer.address);
  });
  await new Promise<void>((done) => server.bind(0, '127.0.0.1', done));
  servers = [`127.0.0.1:${(server.address() as AddressInfo).port}`];
  resolve = dnsResolver({ servers, search: [], ndots: 1, hosts: new Map() });
});

after(() => server.close());

test('addresses of both families, IPv4 first; one family alone; no such name', async () => {
  assert.deepEqual(await resolve('both.test'), [
    { address: '93.184.216.34', family: 4 },
    { address: '2606:4700::1111', family: 6 },
  ]);
  assert.deepEqual(await resolve('v6only.test'), [{ address: '2606:4700::1111', family: 6 }]);
  assert.deepEqual(await resolve('BOTH.test.'), await resolve('both.test'), 'case and a trailing dot do not matter');
  await assert.rejects(resolveAndCheck('missing.test', { allowedCidrs: [] }, resolve), { code: 'ENOTFOUND' });
});

test("resolv.conf's search list, in glibc's order, and the hosts file first", async () => {
  const { search, ndots } = parseResolvConf('# generated\nnameserver 10.0.0.2\nsearch svc.test cluster.test\noptions ndots:2 timeout:1\n');
  assert.deepEqual({ search, ndots }, { search: ['svc.test', 'cluster.test'], ndots: 2 });
  const hosts = parseHosts('127.0.0.1 localhost\n10.1.2.3  Pinned.Example other # a comment\n# 10.9.9.9 commented\n::1 ip6-localhost\n');
  assert.deepEqual([...hosts.keys()], ['localhost', 'pinned.example', 'other', 'ip6-localhost']);
  const withSearch = dnsResolver({ servers, search, ndots, hosts });
  const before = queries.length;
  // Fewer dots than ndots: the search domains first, as getaddrinfo tries them.
  assert.deepEqual(await withSearch('receiver.default'), [{ address: '10.96.0.8', family: 4 }]);
  assert.deepEqual(queries.slice(before).filter((q) => q.startsWith('A ')), ['A receiver.default.svc.test']);
  assert.deepEqual(await withSearch('receiver'), [{ address: '10.96.0.7', family: 4 }]);
  // At least ndots dots: the name as it is first; a trailing dot: only as it is.
  const first = queries.length;
  assert.deepEqual(await withSearch('receiver.default.svc.test'), [{ address: '10.96.0.8', family: 4 }]);
  assert.deepEqual(queries.slice(first).filter((q) => q.startsWith('A ')), ['A receiver.default.svc.test']);
  assert.deepEqual(await withSearch('receiver.'), []);
  // The hosts file answers without DNS.
  const asked = queries.length;
  assert.deepEqual(await withSearch('pinned.example'), [{ address: '10.1.2.3', family: 4 }]);
  assert.equal(queries.length, asked);
});

test("a search domain whose DNS fails does not fail the name: glibc's rules", async () => {
  const hosts = new Map();
  const both = [{ address: '93.184.216.34', family: 4 }, { address: '2606:4700::1111', family: 6 }];
  // ndots:5, as Kubernetes sets it: every public name is tried with the search domains first.
  // SERVFAIL moves on to the next candidate.
  assert.deepEqual(await dnsResolver({ servers, search: ['broken.test', 'svc.test'], ndots: 5, hosts })('both.test'), both);
  // REFUSED ends the search list, and the name is still asked as it is.
  let before = queries.length;
  assert.deepEqual(await dnsResolver({ servers, search: ['refusing.test', 'svc.test'], ndots: 5, hosts })('both.test'), both);
  assert.ok(!queries.slice(before).some((q) => q.endsWith('svc.test')), 'the search list ended at the refusal');
  // With nothing found anywhere, the failure is the answer (a temporary one: the attempt is retried).
  await assert.rejects(dnsResolver({ servers, search: [], ndots: 1, hosts })('x.refusing.test'), { code: 'EREFUSED' });
  before = queries.length;
  await assert.rejects(dnsResolver({ servers, search: ['broken.test'], ndots: 1, hosts })('missing.test'), { code: 'ESERVFAIL' });
  assert.deepEqual(queries.slice(before).filter((q) => q.startsWith('A ')), ['A missing.test', 'A missing.test.broken.test']);
});

test('one private address among public ones refuses the name', async () => {
  await assert.rejects(resolveAndCheck('private.test', { allowedCidrs: [] }, resolve), { code: 'EBLOCKED' });
});

test('localhost names are loopback without asking DNS', async () => {
  const before = queries.length;
  assert.deepEqual(await resolve('localhost'), [{ address: '127.0.0.1', family: 4 }]);
  // As the URL policy judges it: allowed by the usual local exemption.
  assert.deepEqual(await resolveAndCheck('localhost', { allowedCidrs: ['127.0.0.0/8'] }, resolve), [{ address: '127.0.0.1', family: 4 }]);
  assert.deepEqual(await resolve('api.localhost.'), await resolve('localhost'));
  assert.equal(queries.length, before);
});

test('a lookup answers while libuv\'s thread pool is busy', async () => {
  // Four long key derivations take every thread of the default pool.
  let derived = 0;
  const busy = Array.from({ length: 4 }, () =>
    new Promise<void>((done) => crypto.pbkdf2('p', 's', 1_000_000, 32, 'sha512', () => done())).then(() => derived++),
  );
  assert.deepEqual(await resolve('good.test'), [{ address: '127.0.0.1', family: 4 }]);
  assert.equal(derived, 0, 'answered before any thread of the pool came free');
  await Promise.all(busy);
});

test("names whose DNS never answers hold up neither other names' deliveries nor the sender", async () => {
  const receiver = await startReceiver();
  const sender = createSender({ addressPolicy: { allowedCidrs: ['127.0.0.0/8'] }, allowHttp: true, timeoutMs: 15_000, resolve });
  const request = (url: string, n: number) => ({
    url, secrets: [`whsec_${Buffer.alloc(32, n).toString('base64')}`], scheme: 'v1' as const,
    eventId: `evt_${n}`, eventType: 'a.b', createdAt: Date.now(), payload: '{}',
  });
  try {
    const stuck = Array.from({ length: 8 }, (_, i) => sender.send(request(`https://hook-${i}.slow.test/x`, i)));
    let stuckEnded = 0;
    for (const s of stuck) void s.then(() => stuckEnded++);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const healthy = await sender.send(request(`http://good.test:${receiver.port}/hook`, 100));
    assert.equal(healthy.kind === 'response' && healthy.status, 200, JSON.stringify(healthy));
    assert.equal(stuckEnded, 0, 'delivered while the black-holed lookups were all still waiting');
    // Each of those ends on the resolver's own timeout (2 tries of 2 s), well inside the attempt's.
    for (const outcome of await Promise.all(stuck)) {
      assert.ok(outcome.kind === 'error' && /ETIMEOUT/.test(outcome.error), JSON.stringify(outcome));
    }
  } finally {
    await sender.close();
    await receiver.close();
  }
});
