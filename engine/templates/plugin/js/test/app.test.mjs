// Tests of the connector, natively (`npm test`): the fake host stands in
// for `http.send`, so no network and no wasm are needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { answer } from './fake-host.mjs';
import { plugin } from '../app.js';

const ctx = { baseUrl: 'https://vendor.test', settings: [] };

test('list pages with the last id as cursor', () => {
  answer({
    'get https://vendor.test/v1/customers?limit=2': [200, { data: [{ id: 'c3' }, { id: 'c2' }], has_more: true }],
    'get https://vendor.test/v1/customers?limit=2&starting_after=c2': [200, { data: [{ id: 'c1' }], has_more: false }],
  });
  const first = plugin.list(ctx, { resource: 'customers', pageSize: 2 });
  assert.equal(first.nextCursor, 'c2');
  const second = plugin.list(ctx, { resource: 'customers', cursor: 'c2', pageSize: 2 });
  assert.deepEqual(second.records.map((r) => JSON.parse(r).id), ['c1']);
  assert.equal(second.nextCursor, undefined);
});

test('an unknown or deleted customer is absent', () => {
  answer({
    'get https://vendor.test/v1/customers/nope': [404, { error: { message: 'No such customer' } }],
    'get https://vendor.test/v1/customers/gone': [200, { id: 'gone', deleted: true }],
  });
  assert.equal(plugin.get(ctx, 'customers', 'nope'), undefined);
  assert.equal(plugin.get(ctx, 'customers', 'gone'), undefined);
});

test('a wrong key is unauthorized, naming the vendor', () => {
  answer({ 'get https://vendor.test/v1/customers?limit=1': [401, { error: { message: 'Invalid API Key' } }] });
  assert.throws(
    () => plugin.list(ctx, { resource: 'customers', pageSize: 1 }),
    (error) => error.payload.tag === 'unauthorized' && error.payload.val.includes('HTTP 401'),
  );
});
