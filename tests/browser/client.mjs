// pere.js in Chromium, loaded from the server's /pere.js into a page of the server's origin.
// Usage: node client.mjs SERVER_URL MODE CHANNEL
//   publish: publish(), its idempotency key, typed events, refusals
//   dedupe:  a redelivered event (server started with --ack-timeout) reaches the application once
//   resume:  the server is killed and restarted (the test says RESTART / hears a line), pere.js
//            resumes from the last id it saw and gives each event once
//   reset:   the restarted server lost its history: pere-reset, then new ids are events again
//   eventsource: Chromium's own EventSource against the feed (interop): exactly the events
import { run, check, waitFor, artefact, push, say, hear } from './harness.mjs';

const [base, mode, channel] = process.argv.slice(2);

// Runs in the page: subscribes with pere.js and records everything it reports in window.seen.
function subscribeInPage({ channel, device, autoAck, types }) {
  return import('/pere.js').then(({ subscribe }) => {
    const seen = { events: [], duplicates: [], states: [], receipts: [], gaps: [], resets: [] };
    window.seen = seen;
    window.sub = subscribe({
      channel, device, autoAck, types,
      onEvent: (e) => { seen.events.push({ id: e.id, type: e.type, data: e.data }); window.lastEvent = e; },
      onDuplicate: (e) => seen.duplicates.push(e.id),
      onState: (s) => seen.states.push(s.state),
      onReceipt: (r) => seen.receipts.push({ id: r.event.id, ok: r.ok, status: r.receipt?.status }),
      onGap: (g) => seen.gaps.push(g),
      onReset: (r) => seen.resets.push(r),
    });
  });
}

const seen = (page) => page.evaluate(() => window.seen);
const ids = (list) => list.map((e) => e.id).join(',');

async function opened(page, times = 1) {
  await waitFor('the feed to open', async () => (await seen(page)).states.filter((s) => s === 'open').length >= times);
}

await run(async ({ context }) => {
  const page = await context.newPage();
  // Any page of the server's origin: pere.js is imported from there, as an application would.
  await page.goto(`${base}/health`);

  if (mode === 'publish') {
    await page.evaluate(subscribeInPage, { channel, device: 'W-pub', autoAck: true, types: ['alert'] });
    await opened(page);
    const results = await page.evaluate(async (channel) => {
      const { publish, PereError } = await import('/pere.js');
      const first = await publish({ channel, body: { hello: 'world' } });
      const again = await publish({ channel, body: { hello: 'world' }, idempotencyKey: 'key-1' });
      const replay = await publish({ channel, body: { hello: 'world' }, idempotencyKey: 'key-1' });
      const typed = await publish({ channel, body: 'red alert', type: 'alert' });
      let conflict = null;
      try { await publish({ channel, body: 'other', idempotencyKey: 'key-1' }); } catch (e) { conflict = e instanceof PereError ? e.code : String(e); }
      let badName = null;
      try { await publish({ channel: 'a/b', body: 'x' }); } catch (e) { badName = e.name; }
      return { first, again, replay, typed, conflict, badName };
    }, channel);
    say('PUBLISHED ' + JSON.stringify(results));
    check(results.first.id === 1 && results.first.replayed === false, 'first publish is id 1');
    check(results.replay.id === results.again.id && results.replay.replayed === true, 'the same key answers the same id, replayed');
    check(results.replay.time === results.again.time, 'a replay answers the first time');
    check(results.typed.id === 3, 'the replay stored nothing: the next id is 3');
    check(results.conflict === 'idempotency_conflict', 'another body with the same key: ' + results.conflict);
    check(results.badName === 'TypeError', 'a bad channel name is refused before sending');
    await waitFor('three events', async () => (await seen(page)).events.length >= 3);
    const got = await seen(page);
    check(ids(got.events) === '1,2,3', 'events 1, 2, 3 once each: ' + ids(got.events));
    check(got.events[2].type === 'alert' && got.events[2].data === 'red alert', 'the typed event: ' + JSON.stringify(got.events[2]));
    await waitFor('three receipts', async () => (await seen(page)).receipts.filter((r) => r.ok).length >= 3);
  } else if (mode === 'dedupe') {
    await page.evaluate(subscribeInPage, { channel, device: 'W-dup', autoAck: false });
    await opened(page);
    const id = await push(base, channel, 'once');
    await waitFor('the redelivery of event ' + id, async () => (await seen(page)).duplicates.length >= 1);
    const got = await seen(page);
    check(ids(got.events) === String(id), 'the application saw the event once: ' + ids(got.events));
    check(got.receipts.length === 0, 'no automatic receipt with autoAck: false');
    const receipt = await page.evaluate(() => window.lastEvent.ack('done by the app'));
    check(receipt.status === 'done by the app', 'event.ack(status) answers the stored receipt: ' + JSON.stringify(receipt));
    say('DUPLICATES ' + got.duplicates.join(','));
  } else if (mode === 'resume' || mode === 'reset') {
    await page.evaluate(subscribeInPage, { channel, device: 'W-' + mode, autoAck: true });
    await opened(page);
    const id = await push(base, channel, 'before');
    await waitFor('event ' + id + ' acknowledged', async () => (await seen(page)).receipts.some((r) => r.ok));
    say('RESTART');
    check((await hear()) === 'restarted', 'the test restarted the server');
    await waitFor('the browser to reconnect', async () => (await seen(page)).states.filter((s) => s === 'open').length >= 2);
    if (mode === 'reset') {
      await waitFor('pere-reset', async () => (await seen(page)).resets.length >= 1);
    }
    const next = await push(base, channel, 'after');
    await waitFor('event "after"', async () => (await seen(page)).events.some((e) => e.data === 'after'));
    await waitFor('two receipts', async () => (await seen(page)).receipts.filter((r) => r.ok).length >= 2);
    const got = await seen(page);
    const expected = mode === 'reset' ? '1,1' : '1,2';
    check(ids(got.events) === expected, 'events ' + expected + ': ' + ids(got.events) + ' (pushed ' + next + ')');
    check(got.events.map((e) => e.data).join(',') === 'before,after', 'each event once: ' + JSON.stringify(got.events));
    say('STATES ' + got.states.join(','));
  } else if (mode === 'eventsource') {
    // Chromium's EventSource without pere.js: the opening gives no message, keep-alives give none.
    const first = await push(base, channel, 'one');
    await page.evaluate(({ channel }) => {
      window.got = [];
      const es = new EventSource('/feed/' + channel + '?device=W-es');
      es.onmessage = (e) => window.got.push({ id: e.lastEventId, data: e.data });
      window.es = es;
    }, { channel });
    await waitFor('event ' + first, async () => (await page.evaluate(() => window.got.length)) >= 1);
    // Idle for longer than the server's keep-alive interval (1 s in this test), then one more.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await push(base, channel, 'two');
    await waitFor('event two', async () => (await page.evaluate(() => window.got.length)) >= 2);
    await page.evaluate(({ channel }) => {
      window.es.close();
      window.got.push({ resumed: true });
      const es = new EventSource('/feed/' + channel + '?device=W-es&lastEventId=1');
      es.onmessage = (e) => window.got.push({ id: e.lastEventId, data: e.data });
    }, { channel });
    await waitFor('the resumed event', async () => (await page.evaluate(() => window.got.length)) >= 4);
    const got = await page.evaluate(() => window.got);
    say('MESSAGES ' + JSON.stringify(got));
    check(JSON.stringify(got) === JSON.stringify([{ id: '1', data: 'one' }, { id: '2', data: 'two' }, { resumed: true }, { id: '2', data: 'two' }]),
      'exactly the pushed events, then the resume after 1: ' + JSON.stringify(got));
  } else {
    throw new Error('unknown mode ' + mode);
  }
  await page.screenshot({ path: artefact('client-' + mode + '.png') });
});
