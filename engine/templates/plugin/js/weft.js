// Helpers for a weft connector in JavaScript: typed errors, HTTP status to
// error mapping, JSON and pagination. Written by `weft plugin new`; it is
// yours to change.
//
// How WIT looks here (componentize-js): a `result<T, connector-error>` is a
// return value for `T` and a thrown error for the error (throw what these
// helpers make: `throw notFound("no customer cus_1")`); a variant is
// `{ tag: 'not-found', val: '…' }` (kebab-case tags); an enum a string
// (`'list'`, `'upsert-batch'`); an `option<T>` is `T` or `undefined`; a
// record an object with camelCase fields; `list<u8>` a `Uint8Array`; a
// `u64` a `BigInt`. An import that returns a `result` (`send`) throws on
// its error, the variant in the thrown value's `payload`.

import { send as hostSend } from 'weft:connector/http@0.1.0';
import { log as hostLog } from 'weft:connector/log@0.1.0';

// --- errors ------------------------------------------------------------------

/** A typed connector error, to `throw`. */
export class ConnectorError extends Error {
  constructor(tag, val) {
    super(`${tag}: ${typeof val === 'string' ? val : val.message}`);
    // What componentize-js hands the host as the `connector-error`.
    this.payload = { tag, val };
  }
}

const make = (tag) => (message) => new ConnectorError(tag, message);
/** The record or resource does not exist. */
export const notFound = make('not-found');
/** The write clashes with existing state. */
export const conflict = make('conflict');
/** The input is wrong; say which field. */
export const invalidInput = make('invalid-input');
/** The credential is missing, wrong or expired. */
export const unauthorized = make('unauthorized');
/** The credential is valid but may not do this. */
export const forbidden = make('forbidden');
/** This connector or vendor does not offer this. */
export const unsupported = make('unsupported');
/** A failure that may pass if tried again (the host retries). */
export const transient = make('transient');
/** Anything else. */
export const fatal = make('fatal');
/** The vendor asked us to slow down (the host retries). */
export function rateLimited(message, retryAfterMs) {
  return new ConnectorError('rate-limited', {
    retryAfterMs: retryAfterMs === undefined ? undefined : BigInt(retryAfterMs),
    message,
  });
}

const text = new TextDecoder();
const bytes = new TextEncoder();

/** What a vendor's error body says, from the common shapes. */
export function vendorMessage(body) {
  const raw = text.decode(body);
  let value;
  try {
    value = JSON.parse(raw);
  } catch {
    return raw.slice(0, 200).trim();
  }
  if (value && typeof value === 'object') {
    const error = value.error;
    if (error && typeof error === 'object') {
      return [error.type, error.message].filter(Boolean).join(': ');
    }
    if (typeof error === 'string') return error;
    for (const key of ['message', 'detail', 'error_description']) {
      if (typeof value[key] === 'string') return value[key];
    }
  }
  return JSON.stringify(value).slice(0, 200);
}

/** `Retry-After` in milliseconds, when it is a number of seconds. */
export function retryAfterMs(response) {
  const header = response.headers.find(([name]) => name === 'retry-after');
  const seconds = header ? Number(header[1]) : NaN;
  return Number.isFinite(seconds) ? Math.round(seconds * 1000) : undefined;
}

/**
 * The typed error for a non-2xx answer, naming the vendor, the status and
 * what the vendor said: 400/422 invalid-input, 401 unauthorized, 403
 * forbidden, 404/410 not-found, 409 conflict, 429 rate-limited (with
 * Retry-After), 408 and 5xx transient, anything else fatal.
 */
export function errorForStatus(vendor, response) {
  const { status } = response;
  const message = `${vendor}: HTTP ${status}: ${vendorMessage(response.body)}`;
  if (status === 400 || status === 422) return invalidInput(message);
  if (status === 401) return unauthorized(message);
  if (status === 403) return forbidden(message);
  if (status === 404 || status === 410) return notFound(message);
  if (status === 409) return conflict(message);
  if (status === 429) return rateLimited(message, retryAfterMs(response));
  if (status === 408 || (status >= 500 && status <= 599)) return transient(message);
  return fatal(message);
}

// --- HTTP ----------------------------------------------------------------------

/** `path` joined to the base URL, with `query` (`undefined` values left out). */
export function url(ctx, path, query = {}) {
  const pairs = Object.entries(query)
    .filter(([, value]) => value !== undefined && value !== null)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`);
  return ctx.baseUrl + path + (pairs.length ? `?${pairs.join('&')}` : '');
}

/**
 * Sends one request through the host (which adds the credential and applies
 * the connection's limits). No answer at all throws a typed error; a non-2xx
 * answer is returned, for the caller to map.
 */
export function send(method, target, { headers = [], body, idempotent = false } = {}) {
  try {
    return hostSend({ method, url: target, headers, body, idempotent });
  } catch (error) {
    const failure = error?.payload ?? error;
    const message = `HTTP ${failure?.tag}: ${failure?.val}`;
    if (failure?.tag === 'timeout' || failure?.tag === 'connection') throw transient(message);
    throw fatal(message);
  }
}

/** GETs `target` and decodes its JSON; a non-2xx answer throws its typed error. */
export function getJson(vendor, target) {
  const response = send('get', target, { headers: [['accept', 'application/json']] });
  if (response.status < 200 || response.status > 299) throw errorForStatus(vendor, response);
  return decode(vendor, response.body);
}

/** `body` as JSON, or a fatal error naming the vendor. */
export function decode(vendor, body) {
  try {
    return JSON.parse(text.decode(body));
  } catch (error) {
    throw fatal(`${vendor}: the answer is not JSON: ${error.message}`);
  }
}

/** A JSON request body. */
export function jsonBody(value) {
  return bytes.encode(JSON.stringify(value));
}

// --- records and pages -----------------------------------------------------------

/** A record as the host takes it: one JSON object as text. */
export const record = (value) => JSON.stringify(value);

/** A page of `records` (objects); `nextCursor` is `undefined` on the last page. */
export function page(records, nextCursor) {
  return { records: records.map(record), nextCursor };
}

/** The list request's filter object, `{}` when none. */
export function filters(request) {
  if (request.filter === undefined) return {};
  const value = JSON.parse(request.filter);
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidInput('the filter must be a JSON object');
  }
  return value;
}

/** A log line recorded with the run. */
export const info = (message) => hostLog('info', message);
/** A log line for debugging (`--log weft=debug`). */
export const debug = (message) => hostLog('debug', message);
