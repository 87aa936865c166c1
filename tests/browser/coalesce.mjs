// pere.js coalescing its receipts in Chromium, loaded from the server's /pere.js into a page of
// the server's origin. The page counts its receipt requests by form (single, batch, cumulative)
// through the fetch option; the Rust test checks what the server recorded.
// Usage: node coalesce.mjs SERVER_URL MODE CHANNEL
//   burst:    events pushed at once to a page that acknowledges each by itself: a few receipt
//             requests, not one each; then a lone event, acknowledged at once, alone
//   statuses: the application acknowledges each event with a status of its own, without
//             waiting for the receipt: what piles up goes as batches
//   older:    a shim answers the coalesced forms as an older PERE does (400): every receipt is
//             sent again alone, and onNotice says so once
//   spaced:   with a receipt spacing of 2 s, a first receipt leaves at once and the next, right
//             behind it, 2 s after the first request began
import { run, check, waitFor, artefact, say } from './harness.mjs';

const [base, mode, channel] = process.argv.slice(2);
const BURST = 200;
const SPACING_MS = 2000;

// Runs in the page: subscribes with pere.js, records events, receipts, notices and requests.
function subscribeInPage({ channel, device, autoAck, older, receiptSpacing }) {
  return import('/pere.js').then(({ subscribe }) => {
    const seen = { events: [], receipts: [], notices: [], requests: [], sentAt: [], states: [] };
    window.seen = seen;
    const form = (init) => {
      if (init.headers['Content-Type'] === 'application/x-ndjson') return 'batch';
      return JSON.parse(init.body).upto !== undefined ? 'cumulative' : 'single';
    };
    const fetch = (url, init) => {
      if (init?.method === 'POST' && url.includes('/feedback/')) {
        const kind = form(init);
        seen.requests.push(kind);
        seen.sentAt.push(performance.now());
        if (older && kind !== 'single') {
          // What an older PERE answers: a cumulative receipt has no event id, a batch is not
          // one JSON value.
          const code = kind === 'batch' ? 'invalid_json' : 'missing_event_id';
          const body = JSON.stringify({ error: { code, message: 'an older server' } });
          return Promise.resolve(new Response(body, { status: 400, headers: { 'Content-Type': 'application/json' } }));
        }
      }
      return window.fetch(url, init);
    };
    window.sub = subscribe({
      channel, device, autoAck, fetch, receiptSpacing,
      onEvent: (e) => {
        seen.events.push(e.id);
        // Acknowledged as handled, without waiting for the receipt.
        if (!autoAck) e.ack(Number(e.id) % 3 === 0 ? 'failed' : 'done').catch(() => {});
      },
      onReceipt: (r) => {
        if (!r.retrying) seen.receipts.push({ id: r.event.id, ok: r.ok, receipt: r.receipt ?? null });
      },
      onNotice: (n) => seen.notices.push(n.code),
      onState: (s) => seen.states.push(s.state),
    });
  });
}

const seen = (page) => page.evaluate(() => window.seen);
const ok = (got) => got.receipts.filter((r) => r.ok);
const count = (list) => list.reduce((all, k) => ({ ...all, [k]: (all[k] ?? 0) + 1 }), {});

/** Publishes `n` events at once from Node: one batch, consecutive ids. */
async function pushBatch(n) {
  const body = Array.from({ length: n }, (_, i) => JSON.stringify({ n: i + 1 }) + '\n').join('');
  const res = await fetch(base + '/push/' + channel, {
    method: 'POST', headers: { 'Content-Type': 'application/x-ndjson', device: 'P-test' }, body,
  });
  if (!res.ok) throw new Error('batch push answered ' + res.status + ' ' + await res.text());
  return (await res.json()).ids;
}

await run(async ({ context }) => {
  const page = await context.newPage();
  await page.goto(`${base}/health`);
  const device = 'W-' + mode;
  const receiptSpacing = mode === 'spaced' ? SPACING_MS : undefined;
  await page.evaluate(subscribeInPage, { channel, device, autoAck: mode !== 'statuses', older: mode === 'older', receiptSpacing });
  await waitFor('the feed to open', async () => (await seen(page)).states.includes('open'));

  if (mode === 'burst') {
    const ids = await pushBatch(BURST);
    await waitFor(BURST + ' receipts', async () => ok(await seen(page)).length >= BURST);
    let got = await seen(page);
    say('REQUESTS ' + got.requests.length + ' ' + JSON.stringify(count(got.requests)));
    check(got.events.join(',') === ids.join(','), 'each event once, in order');
    check(ok(got).length === BURST && got.receipts.length === BURST, 'every receipt went: ' + JSON.stringify(got.receipts.filter((r) => !r.ok)));
    check(got.requests.length <= BURST / 4, got.requests.length + ' requests for ' + BURST + ' events');
    check(got.requests.includes('cumulative'), 'one status, nothing skipped: cumulative receipts');
    check(got.receipts.some((r) => r.receipt.upto === BURST && r.receipt.acknowledged === true), 'the answer of "upto" names each event');
    // Quiet again: the next receipt leaves at once, alone, answered with the stored receipt.
    const before = got.requests.length;
    const [lone] = await pushBatch(1);
    await waitFor('the lone receipt', async () => ok(await seen(page)).length > BURST);
    got = await seen(page);
    const last = got.receipts[got.receipts.length - 1];
    check(got.requests.length === before + 1 && got.requests[before] === 'single', 'one request, the original form: ' + got.requests.slice(before));
    check(last.id === String(lone) && last.receipt.status === 'ok' && typeof last.receipt.time === 'string', 'the stored receipt: ' + JSON.stringify(last));
    say('LONE ' + lone);
  } else if (mode === 'statuses') {
    const n = 60;
    await pushBatch(n);
    await waitFor(n + ' receipts', async () => ok(await seen(page)).length >= n);
    const got = await seen(page);
    say('REQUESTS ' + got.requests.length + ' ' + JSON.stringify(count(got.requests)));
    check(got.requests.includes('batch'), 'two statuses: batches');
    check(got.requests.length < n / 2, got.requests.length + ' requests for ' + n + ' receipts');
    for (const r of got.receipts) {
      const want = Number(r.id) % 3 === 0 ? 'failed' : 'done';
      check(r.ok && r.receipt.status === want, 'event ' + r.id + ' ' + want + ': ' + JSON.stringify(r));
    }
  } else if (mode === 'older') {
    const n = 30;
    await pushBatch(n);
    await waitFor(n + ' receipts', async () => ok(await seen(page)).length >= n);
    const got = await seen(page);
    say('REQUESTS ' + got.requests.length + ' ' + JSON.stringify(count(got.requests)));
    say('NOTICES ' + got.notices.join(','));
    check(got.notices.join(',') === 'receipts_one_by_one', 'said once: ' + got.notices);
    check(got.requests.filter((k) => k === 'single').length === n, 'every receipt alone in the end');
    check(got.receipts.every((r) => r.ok && typeof r.receipt.time === 'string'), 'each answered with its stored receipt');
  } else if (mode === 'spaced') {
    // The page's clock: when each receipt went, against when its event was pushed.
    const now = () => page.evaluate(() => performance.now());
    const pushedAt = [];
    for (const n of [1, 2]) {
      pushedAt.push(await now());
      await pushBatch(1);
      await waitFor('receipt ' + n, async () => ok(await seen(page)).length >= n);
    }
    const got = await seen(page);
    say('REQUESTS ' + got.requests.length + ' ' + JSON.stringify(got.requests));
    check(got.requests.length === 2, 'one request per event: ' + got.requests);
    const first = got.sentAt[0] - pushedAt[0];
    check(first < SPACING_MS / 2, 'the first receipt left at once: after ' + first + ' ms');
    const apart = got.sentAt[1] - got.sentAt[0];
    check(apart >= SPACING_MS - 50, 'the second request began ' + apart + ' ms after the first');
  } else {
    throw new Error('unknown mode ' + mode);
  }
  await page.screenshot({ path: artefact('coalesce-' + mode + '.png') });
});
