/**
 * pere.js: the JavaScript client of PERE (Push Events with Return-receipt Engine).
 * A dependency-free ES module, served by every PERE server at /pere.js.
 *
 *   import { subscribe, publish, deviceId } from '/pere.js';
 *
 *   const sub = subscribe({
 *     channel: 'CHANNEL_1',          // required
 *     device: deviceId(),            // default: deviceId(), or the token's device; null: anonymous
 *     token,                         // optional: sent as ?access_token= on the feed, as a bearer on receipts
 *     server: '',                    // default: the page's own server; or 'https://push.example'
 *     lastEventId,                   // optional: resume after this id
 *     autoAck: true,                 // false: call event.ack(status) yourself
 *     status: 'ok',                  // the status of automatic receipts
 *     coalesce: true,                // false: each receipt in a request of its own
 *     receiptSpacing: 100,           // least ms between the starts of two coalesced receipt requests (0 to 60000)
 *     types: ['alert'],              // event types to receive besides plain messages
 *     onEvent(event) {},             // {id, type, data, json(), redelivered, ack(status)}: once per id
 *     onState(s) {},                 // {state: 'connecting'|'open'|'closed', retryMs, reason, since}
 *     onGap(gap) {},                 // {from, to}: events the server can no longer send (pruned, or damaged)
 *     onReset(reset) {},             // {last_event_id, head}: the server's ids started over
 *     onReceipt(r) {},               // {event, ok, receipt | error}: how each receipt went
 *     onDuplicate(event) {},         // an id already seen (a redelivery): not given to onEvent
 *     onNotice(n) {},                // {code, message}: e.g. receipts sent one by one (default: console.warn)
 *   });
 *   sub.close();
 *
 *   const { id, time, replayed } = await publish({ channel: 'CHANNEL_1', body: { a: 1 }, type, token });
 *
 * subscribe() uses the browser's EventSource. The browser reconnects by itself after a dropped
 * stream, sending the last id it saw, after the server's retry hint (the SSE `retry:` field,
 * which EventSource does not show to scripts: `retryMs` is the server's default of 3000 ms unless
 * the `retryMs` option says otherwise). When the browser gives up (an HTTP error such as 503 or
 * 429), pere.js reconnects itself from the last id it saw, waiting retryMs, then twice as long
 * each time up to a minute. Events already seen (a redelivery, a replay after a reconnect) are
 * dropped by id. `pere-reset` (the server lost its history: ids start over) makes pere.js forget
 * the ids it saw; `pere-gap` is reported to onGap.
 *
 * Receipts: one receipt request in flight per subscription. The first receipt leaves at once (a
 * quiet page acknowledges without delay); those asked for while it is under way go together in
 * the next request: one cumulative receipt ({"device","upto","status"}: every event up to N)
 * when they share a status and this page has acknowledged, or is acknowledging with that
 * status, every event it received up to N, with no id missing since its first one; otherwise a
 * batch (NDJSON, one {"id","status"} a line). event.ack(status) resolves to the stored receipt
 * (one request), the batch line's {id, seq, status, replayed} or {id, status, upto,
 * acknowledged} (a cumulative receipt), each with channel and device. A server that does not
 * take those forms (an older PERE) gets one receipt per request until the stream reopens;
 * onNotice says so once.
 *
 * publish() sends one event with fetch and a fresh Idempotency-Key (or the one given); it retries
 * network errors, 429 and 5xx answers with the same key, so a retry never stores the event twice.
 *
 * deviceId() is the browser's stable device id, kept in localStorage (a new random one the first
 * time); setDeviceId(id) changes it. A stable id matters: each new device id is one more recipient
 * whose receipts every event expects, for days.
 */

/** The server's rule for channel names, device ids (1-128) and event types (1-64). */
export const NAME_RE = /^(?!\.\.?$)[A-Za-z0-9_.:-]{1,128}$/;
const TYPE_RE = /^(?!\.\.?$)[A-Za-z0-9_.:-]{1,64}$/;
/** The event types of the server's notices. */
export const GAP_EVENT = 'pere-gap';
export const RESET_EVENT = 'pere-reset';
/** The server's default `retry:` hint, in milliseconds. */
export const DEFAULT_RETRY_MS = 3000;
const MAX_RETRY_MS = 60000;
// Ids are remembered beyond what an application shows, so a late redelivery is still recognised.
const DEFAULT_REMEMBERED = 5000;
const RECEIPT_RETRY_DELAYS_MS = [1000, 4000];
// A batch stays well within the server's defaults (--max-batch-events 1000, --max-body 64 KiB);
// the rest waits for the next request.
// The least time between the starts of two coalesced receipt requests: a device receiving more
// than ten events a second sends ten requests a second, each acknowledging what came since the
// last; a device receiving fewer sends each receipt at once.
export const DEFAULT_RECEIPT_SPACING_MS = 100;
// The longest spacing kept (a longer one is taken as this), as the Rust client's.
const MAX_RECEIPT_SPACING_MS = 60000;
const MAX_BATCH_LINES = 500;
const MAX_BATCH_BYTES = 32 * 1024;
// Received events whose receipt is not settled, remembered to know what a cumulative receipt
// would cover; past this, cumulative receipts stop (batches still go).
const MAX_OPEN = 10000;
const PUBLISH_RETRY_DELAYS_MS = [500, 2000, 5000];
const DEVICE_KEY = 'pere.subscriber.device';

/** An answer of the server that is not a success, or a failed request. */
export class PereError extends Error {
  constructor(message, { status = 0, code = 'network_error', retryable = false } = {}) {
    super(message);
    this.name = 'PereError';
    this.status = status;
    this.code = code;
    this.retryable = retryable;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A new random device id in the original page's form: W0039 and nine digits. */
export function newDeviceId(prefix = 'W0039') {
  const digits = crypto.getRandomValues(new Uint8Array(9));
  return prefix + Array.from(digits, (d) => d % 10).join('');
}

// localStorage throws in some private modes and on file:// pages; ids then live as long as the page.
let memoryDevice = null;

/** This browser's device id: the one kept in localStorage, or a new one, kept from now on. */
export function deviceId({ key = DEVICE_KEY, prefix = 'W0039' } = {}) {
  let id = null;
  try { id = globalThis.localStorage?.getItem(key) ?? null; } catch { /* not available */ }
  if (id && NAME_RE.test(id)) return id;
  id = memoryDevice || newDeviceId(prefix);
  setDeviceId(id, { key });
  return id;
}

/** Keeps `id` as this browser's device id. Throws a TypeError for an id the server would refuse. */
export function setDeviceId(id, { key = DEVICE_KEY } = {}) {
  if (!NAME_RE.test(id)) throw new TypeError('a device id is 1-128 characters of A-Z a-z 0-9 _ . : -');
  memoryDevice = id;
  try { globalThis.localStorage?.setItem(key, id); } catch { /* kept in memory only */ }
}

/** The device a token speaks for (its `sub` claim), or '' when it names none. */
export function tokenDevice(token) {
  try {
    const payload = String(token).split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const sub = JSON.parse(atob(payload.padEnd(payload.length + (4 - payload.length % 4) % 4, '='))).sub;
    return typeof sub === 'string' ? sub : '';
  } catch { return ''; }
}

function base(server) {
  return server ? String(server).replace(/\/+$/, '') : '';
}

async function errorOf(res) {
  let code = 'http_' + res.status;
  let message = ('HTTP ' + res.status + ' ' + res.statusText).trim();
  try {
    const body = await res.json();
    if (body?.error?.code) code = body.error.code;
    if (body?.error?.message) message = body.error.message;
  } catch { /* not JSON */ }
  const retryable = res.status >= 500 || res.status === 429;
  return new PereError(message, { status: res.status, code, retryable });
}

function authHeaders(token, headers) {
  if (token) headers.Authorization = 'Bearer ' + token;
  return headers;
}

/** A fresh idempotency key: 32 hex characters. */
export function idempotencyKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Publishes one event. `body` is sent as is when a string, as JSON otherwise. Resolves to the
 * server's answer `{channel, id, time}` plus `replayed` (true when the server had it already).
 * Throws a PereError when the server refuses it or cannot be reached after the retries.
 */
export async function publish({
  server = '', channel, body = '', type, token, device, idempotencyKey: key, retries = PUBLISH_RETRY_DELAYS_MS.length,
  fetch: fetchImpl = globalThis.fetch,
} = {}) {
  if (!NAME_RE.test(channel ?? '')) throw new TypeError('channel: 1-128 characters of A-Z a-z 0-9 _ . : -');
  if (type !== undefined && type !== null && !TYPE_RE.test(type)) throw new TypeError('type: 1-64 characters of A-Z a-z 0-9 _ . : -');
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const headers = authHeaders(token, {
    'Content-Type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'Idempotency-Key': key || idempotencyKey(),
  });
  if (type) headers.event = type;
  if (device) headers.device = device;
  const url = base(server) + '/push/' + encodeURIComponent(channel);
  for (let attempt = 0; ; attempt++) {
    let error;
    try {
      const res = await fetchImpl(url, { method: 'POST', headers, body: text });
      if (res.ok) {
        const answer = await res.json();
        return { ...answer, replayed: res.headers.get('Idempotent-Replayed') === 'true' };
      }
      error = await errorOf(res);
    } catch (err) {
      if (err instanceof PereError) throw err;
      error = new PereError('network error: ' + err.message, { retryable: true });
    }
    if (!error.retryable || attempt >= retries) throw error;
    await sleep(PUBLISH_RETRY_DELAYS_MS[Math.min(attempt, PUBLISH_RETRY_DELAYS_MS.length - 1)]);
  }
}

/**
 * Subscribes to a channel; see the top of this file. Returns the subscription:
 * `{ close(), state, retryMs, lastEventId, device, channel }`.
 */
export function subscribe(options = {}) {
  return new Subscription(options);
}

class Subscription {
  constructor({
    server = '', channel, device, token = '', lastEventId = null, autoAck = true, status = 'ok', types = [],
    retryMs = DEFAULT_RETRY_MS, remember = DEFAULT_REMEMBERED, coalesce = true,
    receiptSpacing = DEFAULT_RECEIPT_SPACING_MS,
    onEvent = () => {}, onState = () => {}, onGap = () => {}, onReset = () => {}, onReceipt = () => {},
    onDuplicate = () => {}, onNotice = (n) => console.warn('pere.js: ' + n.message),
    EventSource: EventSourceImpl = globalThis.EventSource, fetch: fetchImpl = globalThis.fetch,
  } = {}) {
    if (!NAME_RE.test(channel ?? '')) throw new TypeError('channel: 1-128 characters of A-Z a-z 0-9 _ . : -');
    // With a token the device is the token's (the server takes no other); null is anonymous.
    if (device === undefined) device = token ? (tokenDevice(token) || null) : deviceId();
    if (device !== null && !NAME_RE.test(device)) throw new TypeError('device: 1-128 characters of A-Z a-z 0-9 _ . : -');
    this.server = base(server);
    this.channel = channel;
    this.device = device;
    this.token = token;
    this.autoAck = autoAck;
    this.status = status;
    this.types = types.filter((t) => TYPE_RE.test(t) && t !== 'message' && t !== GAP_EVENT && t !== RESET_EVENT);
    this.retryMs = retryMs;
    this.remember = remember;
    this.handlers = { onEvent, onState, onGap, onReset, onReceipt, onDuplicate, onNotice };
    this.EventSource = EventSourceImpl;
    // Called as a plain function: a browser's fetch refuses any other `this`.
    this.fetch = (url, init) => fetchImpl(url, init);
    this.lastEventId = lastEventId === null || lastEventId === undefined ? null : String(lastEventId);
    // id -> the event as first seen, with where its receipt stands.
    this.seen = new Map();
    // Receipts: those waiting for the request in flight, and what a cumulative one would cover.
    this.outbox = { queue: [], inFlight: false, coalesce, oneByOne: false, said: false, spacing: Math.min(Math.max(Number(receiptSpacing) || 0, 0), MAX_RECEIPT_SPACING_MS), lastSent: null };
    // Numeric id -> null (received, not acknowledged yet) or the status of a receipt that failed.
    this.open = new Map();
    this.lastReceived = null;
    // Every id from the first received up to the last one arrived.
    this.unbroken = true;
    this.source = null;
    this.timer = null;
    this.delay = retryMs;
    this.state = 'closed';
    this.closedByUser = false;
    this.connect();
  }

  /** Closes the stream for good; receipts already under way still finish. */
  close() {
    this.closedByUser = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.source) this.source.close();
    this.source = null;
    this.setState('closed', { reason: 'closed' });
  }

  /** The feed's URL without the token (to show to a user). */
  get feedUrl() {
    const query = new URLSearchParams();
    if (this.device) query.set('device', this.device);
    return this.server + '/feed/' + encodeURIComponent(this.channel) + (query.toString() ? '?' + query : '');
  }

  setState(state, extra = {}) {
    this.state = state;
    this.handlers.onState({ state, retryMs: this.retryMs, since: new Date(), ...extra });
  }

  connect() {
    if (this.closedByUser) return;
    const query = new URLSearchParams();
    if (this.device) query.set('device', this.device);
    // A new EventSource knows no last id: the server takes it from the query instead.
    if (this.lastEventId !== null) query.set('lastEventId', this.lastEventId);
    // EventSource cannot set headers: the token goes in the query (the server never logs it).
    if (this.token) query.set('access_token', this.token);
    const url = this.server + '/feed/' + encodeURIComponent(this.channel) + (query.toString() ? '?' + query : '');
    this.setState('connecting');
    const es = new this.EventSource(url);
    this.source = es;
    const mine = (handler) => (e) => { if (this.source === es) handler(e); };
    es.onopen = mine(() => {
      this.delay = this.retryMs;
      // A new connection may reach a server that takes coalesced receipts again.
      this.outbox.oneByOne = false;
      this.setState('open');
    });
    es.onerror = mine(() => {
      if (es.readyState === 0) {
        // The browser reconnects by itself after the server's hint, with Last-Event-ID.
        this.setState('connecting', { reason: 'stream dropped; the browser reconnects' });
        return;
      }
      // Closed for good (an HTTP error or a non-SSE answer): the browser gives up, pere.js does not.
      es.close();
      this.source = null;
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, MAX_RETRY_MS);
      this.setState('closed', { reason: 'refused or unreachable', retryMs: wait });
      this.timer = setTimeout(() => this.connect(), wait);
    });
    es.onmessage = mine((e) => this.onMessage(e));
    for (const type of this.types) es.addEventListener(type, mine((e) => this.onMessage(e)));
    es.addEventListener(GAP_EVENT, mine((e) => this.handlers.onGap(parse(e.data))));
    es.addEventListener(RESET_EVENT, mine((e) => {
      // The server no longer knows our ids: forget them, or every new event would look like a
      // duplicate.
      this.seen.clear();
      this.lastEventId = null;
      this.open.clear();
      this.lastReceived = null;
      this.unbroken = true;
      this.handlers.onReset(parse(e.data));
    }));
  }

  onMessage(e) {
    const id = e.lastEventId;
    const known = id !== '' ? this.seen.get(id) : undefined;
    if (known) {
      known.redeliveries++;
      // A redelivery is the server asking again: answer it if our receipt did not get through.
      if (known.receipt === 'failed' && (this.autoAck || known.ackedStatus !== null)) {
        this.sendReceipt(known, known.ackedStatus ?? this.status).catch(() => {});
      }
      this.handlers.onDuplicate(known.event);
      return;
    }
    if (id !== '') this.lastEventId = id;
    const entry = { receipt: 'none', ackedStatus: null, redeliveries: 0, event: null };
    const event = {
      id, type: e.type, data: e.data, receivedAt: new Date(),
      json() { return JSON.parse(this.data); },
      ack: (status = this.status) => this.sendReceipt(entry, status),
    };
    entry.event = event;
    if (id !== '') {
      this.seen.set(id, entry);
      if (this.seen.size > this.remember) this.seen.delete(this.seen.keys().next().value);
      this.received(id);
    }
    this.handlers.onEvent(event);
    if (this.autoAck && entry.receipt === 'none') event.ack(this.status).catch(() => {});
  }

  /** Notes a new event whose receipt this page owes until it acknowledges it. */
  received(id) {
    const n = safeId(id);
    if (!this.device) return;
    if (n === null) {
      this.unbroken = false;
      return;
    }
    if (this.lastReceived !== null && n !== this.lastReceived + 1) this.unbroken = false;
    this.lastReceived = n;
    this.owe(n, null);
  }

  owe(n, status) {
    this.open.set(n, status);
    if (this.open.size > MAX_OPEN) {
      // Forgotten, so no longer vouched for.
      this.open.delete(this.open.keys().next().value);
      this.unbroken = false;
    }
  }

  /**
   * Asks for the receipt of an event: resolves to the server's receipt, or rejects with a
   * PereError. It goes at once when no receipt request is under way, else with the next one.
   * Network errors, 429 and 5xx are retried twice.
   */
  sendReceipt(entry, status) {
    const event = entry.event;
    if (!/^\d+$/.test(event.id)) {
      const error = new PereError('this event has no numeric id: it cannot be acknowledged', { code: 'bad_event_id' });
      this.handlers.onReceipt({ event, ok: false, error });
      return Promise.reject(error);
    }
    if (!this.device) {
      const error = new PereError('an anonymous subscriber sends no receipts', { code: 'missing_device' });
      this.handlers.onReceipt({ event, ok: false, error });
      return Promise.reject(error);
    }
    entry.receipt = 'sending';
    entry.ackedStatus = status;
    const n = safeId(event.id);
    if (n !== null) this.open.delete(n);
    return new Promise((resolve, reject) => {
      this.outbox.queue.push({ entry, status, resolve, reject, alone: false });
      this.pump();
    });
  }

  /** Sends the next request unless one is under way; then the next, until none waits. */
  async pump() {
    const box = this.outbox;
    if (box.inFlight || box.queue.length === 0) return;
    box.inFlight = true;
    try {
      // A device that sent a request less than the spacing ago waits out the rest, and what it
      // acknowledges meanwhile goes in the same request; a quiet one sends at once.
      const merging = box.coalesce && !box.oneByOne;
      const wait = merging && box.lastSent !== null ? box.lastSent + box.spacing - performance.now() : 0;
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      box.lastSent = performance.now();
      await this.send(this.nextRequest());
    } finally {
      box.inFlight = false;
    }
    this.pump();
  }

  /** The waiting receipts that go in the next request: {kind, receipts, upto, status, owed}. */
  nextRequest() {
    const box = this.outbox;
    const queue = box.queue;
    // Ids beyond 2^53 go alone: a JS number cannot say them.
    const alone = queue.findIndex((r) => r.alone || safeId(r.entry.event.id) === null);
    if (alone >= 0) return { kind: 'single', receipts: queue.splice(alone, 1) };
    if (!box.coalesce || box.oneByOne || queue.length === 1) return { kind: 'single', receipts: queue.splice(0, 1) };
    const cumulative = this.cumulative();
    if (cumulative) return cumulative;
    queue.sort((a, b) => safeId(a.entry.event.id) - safeId(b.entry.event.id));
    let lines = 0;
    let bytes = 0;
    for (const r of queue) {
      const size = 24 + r.entry.event.id.length + r.status.length;
      if (lines > 0 && (lines === MAX_BATCH_LINES || bytes + size > MAX_BATCH_BYTES)) break;
      lines++;
      bytes += size;
    }
    const receipts = queue.splice(0, lines);
    return { kind: receipts.length === 1 ? 'single' : 'batch', receipts };
  }

  /**
   * Every waiting receipt as one cumulative receipt, when "up to N" says exactly what they say:
   * one status, and every event received up to N acknowledged or being acknowledged with it,
   * without a hole since the first id received (an event never seen, e.g. of a type not listened
   * to, is never acknowledged by it); null otherwise.
   */
  cumulative() {
    const queue = this.outbox.queue;
    if (!this.unbroken) return null;
    const status = queue[0].status;
    if (queue.some((r) => r.status !== status)) return null;
    const upto = queue.reduce((max, r) => Math.max(max, safeId(r.entry.event.id)), 0);
    if (this.lastReceived === null || upto > this.lastReceived) return null;
    const owed = [];
    for (const [id, owedStatus] of this.open) {
      if (id > upto) continue;
      if (owedStatus !== status) return null;
      owed.push(id);
    }
    return { kind: 'cumulative', receipts: queue.splice(0), upto, status, owed };
  }

  /** Sends one request with its retries and settles each of its receipts. */
  async send(request) {
    const url = this.server + '/feedback/' + encodeURIComponent(this.channel);
    let headers;
    let body;
    if (request.kind === 'single') {
      const id = request.receipts[0].entry.event.id;
      const numeric = Number(id);
      headers = authHeaders(this.token, { 'Content-Type': 'application/json' });
      // Ids beyond 2^53 would lose digits as a JS number; the server also takes a numeric string.
      body = JSON.stringify({ device: this.device, id: Number.isSafeInteger(numeric) ? numeric : id, status: request.receipts[0].status });
    } else if (request.kind === 'batch') {
      headers = authHeaders(this.token, { 'Content-Type': 'application/x-ndjson', device: this.device });
      body = request.receipts.map((r) => JSON.stringify({ id: safeId(r.entry.event.id), status: r.status }) + '\n').join('');
    } else {
      headers = authHeaders(this.token, { 'Content-Type': 'application/json', device: this.device });
      body = JSON.stringify({ device: this.device, upto: request.upto, status: request.status });
    }
    const acknowledged = [];
    let rounds = 0;
    for (let attempt = 0; ; attempt++) {
      let error;
      try {
        const res = await this.fetch(url, { method: 'POST', headers, body });
        if (res.ok) {
          const answer = await res.json().catch(() => (request.kind === 'single' ? {} : null));
          if (request.kind === 'single') return this.settle(request.receipts[0], answer, attempt);
          if (request.kind === 'batch' && Array.isArray(answer?.receipts) && answer.receipts.length === request.receipts.length) {
            request.receipts.forEach((r, i) => this.settle(r, { channel: answer.channel, device: answer.device, ...answer.receipts[i] }, attempt));
            return;
          }
          if (request.kind === 'cumulative' && answer?.upto === request.upto && Array.isArray(answer.ids)) {
            acknowledged.push(...answer.ids);
            // The server bounded its work: the same receipt again for the rest.
            if (answer.more === true && ++rounds < 1000) {
              attempt = -1;
              continue;
            }
            for (const id of request.owed) {
              this.open.delete(id);
              const known = this.seen.get(String(id));
              if (known) known.receipt = 'ok';
            }
            for (const r of request.receipts) {
              const id = safeId(r.entry.event.id);
              const receipt = { channel: answer.channel, device: answer.device, id, status: r.status, upto: request.upto, acknowledged: acknowledged.includes(id) };
              this.settle(r, receipt, attempt);
            }
            return;
          }
          error = new PereError('HTTP ' + res.status + ' is no answer to ' + request.kind + ' receipts', { status: res.status, code: 'unexpected_answer' });
        } else {
          error = await errorOf(res);
        }
      } catch (err) {
        error = err instanceof PereError ? err : new PereError('network error: ' + err.message, { retryable: true });
      }
      if (request.kind !== 'single' && !error.retryable) return this.refused(request, error);
      if (!error.retryable || attempt >= RECEIPT_RETRY_DELAYS_MS.length) {
        for (const r of request.receipts) this.fail(r, error, attempt);
        return;
      }
      for (const r of request.receipts) this.tell({ event: r.entry.event, ok: false, error, attempt, retrying: true });
      await sleep(RECEIPT_RETRY_DELAYS_MS[attempt]);
    }
  }

  settle(r, receipt, attempt) {
    r.entry.receipt = 'ok';
    r.resolve(receipt);
    this.tell({ event: r.entry.event, ok: true, receipt, attempt });
  }

  fail(r, error, attempt) {
    r.entry.receipt = 'failed';
    // Owed: sent again if the event comes back.
    const n = safeId(r.entry.event.id);
    if (error.retryable && n !== null) this.owe(n, r.status);
    r.reject(error);
    this.tell({ event: r.entry.event, ok: false, error, attempt });
  }

  /** Calls onReceipt; an exception it throws is the page's, and stops no other receipt. */
  tell(report) {
    try {
      this.handlers.onReceipt(report);
    } catch (err) {
      setTimeout(() => { throw err; });
    }
  }

  /**
   * The server refused a batch or a cumulative receipt: its receipts go again one by one, so each
   * gets the server's own verdict. A refusal that says the server does not know the form (an
   * older PERE) also sends every receipt alone until the stream reopens.
   */
  refused(request, error) {
    const box = this.outbox;
    const unknownForm = error.code === 'unexpected_answer' || error.status === 415 ||
      (error.status === 400 && ['missing_event_id', 'invalid_json', 'bad_event_id', 'http_400'].includes(error.code));
    if (unknownForm) {
      box.oneByOne = true;
      if (!box.said) {
        box.said = true;
        this.handlers.onNotice({
          code: 'receipts_one_by_one',
          message: 'the server does not take several receipts in one request (' + error.message + '): one request per receipt until the stream reopens',
        });
      }
    }
    for (const r of request.receipts) r.alone = true;
    box.queue.unshift(...request.receipts);
  }
}

/** An event id as a safe integer, or null. */
function safeId(id) {
  if (!/^\d+$/.test(id)) return null;
  const n = Number(id);
  return Number.isSafeInteger(n) ? n : null;
}

function parse(data) {
  try { return JSON.parse(data); } catch { return { data }; }
}

/**
 * Watches the server's stream of admin events (`GET /admin/stream`, what the dashboard shows);
 * needs an admin token when the server uses tokens. Returns `{ close(), state }`.
 *
 *   const w = watch({
 *     channel: 'CHANNEL_1',           // optional: that channel's devices, receipts grid and receipts
 *     token,                          // optional: sent as ?access_token=
 *     server: '',                     // default: the page's own server
 *     on: { hello(d) {}, channels(d) {}, channel(d) {}, devices(d) {}, device(d) {},
 *           grid(d) {}, event(d) {}, receipt(d) {}, stats(d) {} },   // data parsed from JSON
 *     onState(s) {},                  // {state: 'connecting'|'open'|'closed', retryMs, reason, error, since}
 *   });
 *
 * Every connection starts with `hello` and a snapshot, so a reconnect needs no resume: the
 * application forgets what it knew on `hello`. When the server refuses the stream (401, 403),
 * onState says so with a PereError (`error.status`, `error.code`) and pere.js waits for a new
 * watch (with a token); when it cannot be reached, pere.js retries as subscribe() does.
 */
export function watch(options = {}) {
  return new Watch(options);
}

class Watch {
  constructor({
    server = '', channel = null, token = '', on = {}, onState = () => {}, retryMs = DEFAULT_RETRY_MS,
    EventSource: EventSourceImpl = globalThis.EventSource, fetch: fetchImpl = globalThis.fetch,
  } = {}) {
    if (channel !== null && !NAME_RE.test(channel)) throw new TypeError('channel: 1-128 characters of A-Z a-z 0-9 _ . : -');
    this.server = base(server);
    this.channel = channel;
    this.token = token;
    this.on = on;
    this.onState = onState;
    this.retryMs = retryMs;
    this.delay = retryMs;
    this.EventSource = EventSourceImpl;
    this.fetch = (url, init) => fetchImpl(url, init);
    this.source = null;
    this.timer = null;
    this.state = 'closed';
    this.closedByUser = false;
    this.connect();
  }

  close() {
    this.closedByUser = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.setState('closed', { reason: 'closed' });
  }

  setState(state, extra = {}) {
    this.state = state;
    this.onState({ state, retryMs: this.retryMs, since: new Date(), ...extra });
  }

  url() {
    const query = new URLSearchParams();
    if (this.channel) query.set('channel', this.channel);
    if (this.token) query.set('access_token', this.token);
    return this.server + '/admin/stream' + (query.toString() ? '?' + query : '');
  }

  connect() {
    if (this.closedByUser) return;
    this.setState('connecting');
    const es = new this.EventSource(this.url());
    this.source = es;
    const mine = (handler) => (e) => { if (this.source === es) handler(e); };
    es.onopen = mine(() => {
      this.delay = this.retryMs;
      this.setState('open');
    });
    es.onerror = mine(() => {
      if (es.readyState === 0) {
        this.setState('connecting', { reason: 'stream dropped; the browser reconnects' });
        return;
      }
      es.close();
      this.source = null;
      this.refused();
    });
    for (const [type, handler] of Object.entries(this.on)) {
      es.addEventListener(type, mine((e) => {
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        handler(data);
      }));
    }
  }

  /** Asks the server why the stream closed: a refusal waits for the application, the rest retries. */
  async refused() {
    let error = null;
    try {
      const res = await this.fetch(this.url(), { method: 'HEAD' });
      if (!res.ok) error = await errorOf(await this.fetch(this.url(), { method: 'GET' }));
    } catch (err) {
      error = new PereError('network error: ' + err.message, { retryable: true });
    }
    if (this.closedByUser) return;
    if (error && !error.retryable) {
      this.setState('closed', { reason: 'refused', error });
      return;
    }
    const wait = this.delay;
    this.delay = Math.min(this.delay * 2, MAX_RETRY_MS);
    this.setState('closed', { reason: 'unreachable', error, retryMs: wait });
    this.timer = setTimeout(() => this.connect(), wait);
  }
}
