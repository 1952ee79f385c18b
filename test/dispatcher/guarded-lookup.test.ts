import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo, LookupFunction } from 'node:net';
import type { LookupAddress, LookupOptions } from 'node:dns';
import { Agent, request } from 'undici';
import type { AddressPolicy } from '../../src/core/address-policy.js';
import {
  BlockedAddressError,
  checkHostBeforeConnect,
  createGuardedLookup,
  resolveAndCheck,
  type ResolvedAddress,
  type Resolver,
} from '../../src/dispatcher/guarded-lookup.js';

const strict: AddressPolicy = { allowedCidrs: [] };
const loopbackAllowed: AddressPolicy = { allowedCidrs: ['127.0.0.0/8'] };

function fixedResolver(answers: ResolvedAddress[]): Resolver {
  return async () => answers;
}

type LookupResult = { address: string | LookupAddress[]; family: number | undefined };

// Promisified call of the lookup exactly as net.connect would make it.
function lookup(fn: ReturnType<typeof createGuardedLookup>, hostname: string, options: LookupOptions): Promise<LookupResult> {
  return new Promise((resolve, reject) => {
    fn(hostname, options, (error, address, family) => (error ? reject(error) : resolve({ address, family })));
  });
}

function isBlocked(hostname: string, address: string) {
  return (error: unknown): boolean =>
    error instanceof BlockedAddressError &&
    error.code === 'EBLOCKED' &&
    error.message.startsWith(`blocked: ${hostname} resolves to ${address}: `);
}

const PUBLIC = [
  { address: '2606:4700::1111', family: 6 },
  { address: '93.184.216.34', family: 4 },
];

// ---------------------------------------------------------------------------------------------
// The lookup function

test('a name with one private address among public ones is refused as a whole', async () => {
  const fn = createGuardedLookup(strict, fixedResolver([...PUBLIC, { address: '10.0.0.7', family: 4 }]));
  await assert.rejects(lookup(fn, 'mixed.test', { all: true }), isBlocked('mixed.test', '10.0.0.7'));
  await assert.rejects(lookup(fn, 'mixed.test', {}), isBlocked('mixed.test', '10.0.0.7'));
});

test('the error explains the range', async () => {
  const fn = createGuardedLookup(strict, fixedResolver([{ address: '169.254.169.254', family: 4 }]));
  await assert.rejects(lookup(fn, 'meta.test', {}), {
    code: 'EBLOCKED',
    message: 'blocked: meta.test resolves to 169.254.169.254: address 169.254.169.254 is in the link-local range (169.254.0.0/16)',
  });
});

test('an all-public answer is returned whole when options.all is set (autoSelectFamily)', async () => {
  const fn = createGuardedLookup(strict, fixedResolver(PUBLIC));
  const { address } = await lookup(fn, 'public.test', { all: true });
  assert.deepEqual(address, PUBLIC);
});

test('an all-public answer yields its first address in the single form', async () => {
  const fn = createGuardedLookup(strict, fixedResolver(PUBLIC));
  assert.deepEqual(await lookup(fn, 'public.test', {}), { address: '2606:4700::1111', family: 6 });
  assert.deepEqual(await lookup(fn, 'public.test', { family: 4 }), { address: '93.184.216.34', family: 4 });
  assert.deepEqual(await lookup(fn, 'public.test', { family: 4, all: true }), {
    address: [{ address: '93.184.216.34', family: 4 }],
    family: undefined,
  });
});

test('a private address of a family not asked for still refuses the name', async () => {
  const fn = createGuardedLookup(strict, fixedResolver([{ address: '93.184.216.34', family: 4 }, { address: 'fd00::1', family: 6 }]));
  await assert.rejects(lookup(fn, 'sneaky.test', { family: 4 }), isBlocked('sneaky.test', 'fd00::1'));
});

test('IPv4-mapped answers are judged by the IPv4 address they carry', async () => {
  const fn = createGuardedLookup(strict, fixedResolver([{ address: '::ffff:127.0.0.1', family: 6 }]));
  await assert.rejects(lookup(fn, 'mapped.test', {}), isBlocked('mapped.test', '::ffff:127.0.0.1'));
});

test('each lookup checks afresh, so a rebinding DNS answer is caught', async () => {
  const answers = [[{ address: '93.184.216.34', family: 4 }], [{ address: '127.0.0.1', family: 4 }]];
  let calls = 0;
  const fn = createGuardedLookup(strict, async () => answers[calls++] ?? []);
  assert.deepEqual(await lookup(fn, 'rebind.test', {}), { address: '93.184.216.34', family: 4 });
  await assert.rejects(lookup(fn, 'rebind.test', {}), isBlocked('rebind.test', '127.0.0.1'));
});

test('resolver failures and empty answers surface as lookup errors', async () => {
  const failing = createGuardedLookup(strict, async () => {
    throw Object.assign(new Error('getaddrinfo ENOTFOUND nowhere.test'), { code: 'ENOTFOUND' });
  });
  await assert.rejects(lookup(failing, 'nowhere.test', {}), { code: 'ENOTFOUND' });
  const empty = createGuardedLookup(strict, fixedResolver([]));
  await assert.rejects(lookup(empty, 'empty.test', { all: true }), { code: 'ENOTFOUND' });
  const noV6 = createGuardedLookup(strict, fixedResolver([{ address: '93.184.216.34', family: 4 }]));
  await assert.rejects(lookup(noV6, 'v4only.test', { family: 6 }), { code: 'ENOTFOUND' });
});

test('garbage from the resolver is refused, not connected to', async () => {
  const fn = createGuardedLookup(strict, fixedResolver([{ address: 'not-an-ip', family: 4 }]));
  await assert.rejects(lookup(fn, 'weird.test', {}), { code: 'EBLOCKED' });
});

// ---------------------------------------------------------------------------------------------
// resolveAndCheck and checkHostBeforeConnect

test('resolveAndCheck returns the checked addresses or throws EBLOCKED', async () => {
  assert.deepEqual(await resolveAndCheck('public.test', strict, fixedResolver(PUBLIC)), PUBLIC);
  await assert.rejects(
    resolveAndCheck('private.test', strict, fixedResolver([{ address: '192.168.0.10', family: 4 }])),
    isBlocked('private.test', '192.168.0.10'),
  );
  assert.deepEqual(
    await resolveAndCheck('private.test', { allowedCidrs: ['192.168.0.0/16'] }, fixedResolver([{ address: '192.168.0.10', family: 4 }])),
    [{ address: '192.168.0.10', family: 4 }],
  );
});

test('resolveAndCheck checks IP literals without asking the resolver', async () => {
  const never: Resolver = async () => assert.fail('resolver must not be called for a literal');
  assert.deepEqual(await resolveAndCheck('93.184.216.34', strict, never), [{ address: '93.184.216.34', family: 4 }]);
  assert.deepEqual(await resolveAndCheck('[2606:4700::1111]', strict, never), [{ address: '2606:4700::1111', family: 6 }]);
  await assert.rejects(resolveAndCheck('127.0.0.1', strict, never), { code: 'EBLOCKED', message: /^blocked: 127\.0\.0\.1: / });
  await assert.rejects(resolveAndCheck('0x7f.1', strict, never), { code: 'EBLOCKED' });
});

test('checkHostBeforeConnect refuses blocked IP-literal hosts and leaves names to the lookup', () => {
  for (const raw of ['http://127.0.0.1:8080/', 'http://2130706433/', 'http://[::1]/', 'http://[::ffff:10.0.0.1]/', 'http://127.0.0.1../']) {
    assert.throws(() => checkHostBeforeConnect(new URL(raw), strict), (error: unknown) => error instanceof BlockedAddressError && error.code === 'EBLOCKED', raw);
  }
  checkHostBeforeConnect(new URL('https://93.184.216.34/'), strict);
  checkHostBeforeConnect(new URL('https://[2606:4700::1111]/'), strict);
  checkHostBeforeConnect(new URL('https://localhost/'), strict); // a name: the lookup decides
  checkHostBeforeConnect(new URL('http://127.0.0.1:8080/'), loopbackAllowed);
});

// ---------------------------------------------------------------------------------------------
// Real connections through undici

type Receiver = { port: number; requests: number; connections: number; close: () => Promise<void> };

async function startReceiver(): Promise<Receiver> {
  const receiver = { port: 0, requests: 0, connections: 0, close: async () => {} };
  const server = http.createServer((_req, res) => {
    receiver.requests += 1;
    res.end('ok');
  });
  server.on('connection', () => {
    receiver.connections += 1;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.port = (server.address() as AddressInfo).port;
  receiver.close = () =>
    new Promise<void>((resolve, reject) => {
      server.closeAllConnections();
      server.close((error) => (error ? reject(error) : resolve()));
    });
  return receiver;
}

const rebindToLoopback: Resolver = async () => [{ address: '127.0.0.1', family: 4 }];

async function post(url: string, agent: Agent): Promise<{ status: number; body: string }> {
  const response = await request(url, { method: 'POST', body: '{}', dispatcher: agent });
  return { status: response.statusCode, body: await response.body.text() };
}

// Records how net.connect calls the lookup, to prove both the `all` and the single form are exercised.
function recording(policy: AddressPolicy, resolve: Resolver, allFlags: boolean[]): LookupFunction {
  const inner = createGuardedLookup(policy, resolve);
  return (hostname, options, callback) => {
    allFlags.push(options.all === true);
    inner(hostname, options, callback);
  };
}

for (const autoSelectFamily of [true, false]) {
  test(`a name rebound to 127.0.0.1 never reaches the socket (autoSelectFamily: ${autoSelectFamily})`, async () => {
    const receiver = await startReceiver();
    const allFlags: boolean[] = [];
    const agent = new Agent({ connect: { lookup: recording(strict, rebindToLoopback, allFlags), autoSelectFamily } });
    try {
      await assert.rejects(post(`http://rebind.test:${receiver.port}/hook`, agent), isBlocked('rebind.test', '127.0.0.1'));
      assert.deepEqual(allFlags, [autoSelectFamily]);
      assert.equal(receiver.connections, 0);
      assert.equal(receiver.requests, 0);
    } finally {
      await agent.close();
      await receiver.close();
    }
  });

  test(`the same name is delivered to when 127.0.0.0/8 is allowed (autoSelectFamily: ${autoSelectFamily})`, async () => {
    const receiver = await startReceiver();
    const allFlags: boolean[] = [];
    const agent = new Agent({ connect: { lookup: recording(loopbackAllowed, rebindToLoopback, allFlags), autoSelectFamily } });
    try {
      assert.deepEqual(await post(`http://rebind.test:${receiver.port}/hook`, agent), { status: 200, body: 'ok' });
      assert.deepEqual(allFlags, [autoSelectFamily]);
      assert.equal(receiver.requests, 1);
    } finally {
      await agent.close();
      await receiver.close();
    }
  });
}

test('with the system resolver, localhost is refused and is reachable only when exempted', async () => {
  const receiver = await startReceiver();
  const refusing = new Agent({ connect: { lookup: createGuardedLookup(strict) } });
  const exempting = new Agent({ connect: { lookup: createGuardedLookup({ allowedCidrs: ['127.0.0.0/8', '::1/128'] }) } });
  try {
    await assert.rejects(post(`http://localhost:${receiver.port}/`, refusing), { code: 'EBLOCKED' });
    assert.equal(receiver.connections, 0);
    assert.deepEqual(await post(`http://localhost:${receiver.port}/`, exempting), { status: 200, body: 'ok' });
  } finally {
    await refusing.close();
    await exempting.close();
    await receiver.close();
  }
});
