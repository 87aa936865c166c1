// Interop: Node's `eventsource` package (the pinned version in package.json) reading a feed.
// The opening must give no message, keep-alive comments none either, and a resume with
// Last-Event-ID must start after it. Prints each message as `MSG {...}` and PASS, or FAIL.
// Usage: node eventsource.mjs SERVER_URL CHANNEL DEVICE
import { EventSource } from 'eventsource';
import { check, push, say, waitFor } from './harness.mjs';

const [base, channel, device] = process.argv.slice(2);

function open(lastEventId) {
  const got = [];
  const es = new EventSource(`${base}/feed/${channel}?device=${device}`, {
    fetch: (url, init) => fetch(url, { ...init, headers: { ...init.headers, ...(lastEventId ? { 'Last-Event-ID': lastEventId } : {}) } }),
  });
  es.onmessage = (e) => {
    const message = { id: e.lastEventId, data: e.data };
    say('MSG ' + JSON.stringify(message));
    got.push(message);
  };
  es.onerror = (e) => say('ERROR ' + (e.message || 'stream error'));
  return { es, got };
}

const idle = () => new Promise((resolve) => setTimeout(resolve, 1500));

try {
  await push(base, channel, 'one');
  const first = open(null);
  await waitFor('event one', () => first.got.length >= 1);
  // Longer than the server's keep-alive interval (1 s in this test): comments pass, no message.
  await idle();
  await push(base, channel, 'two');
  await waitFor('event two', () => first.got.length >= 2);
  first.es.close();
  check(JSON.stringify(first.got) === '[{"id":"1","data":"one"},{"id":"2","data":"two"}]', 'first stream: ' + JSON.stringify(first.got));

  const resumed = open('1');
  await waitFor('the resumed event', () => resumed.got.length >= 1);
  await idle();
  await push(base, channel, 'three');
  await waitFor('event three', () => resumed.got.length >= 2);
  resumed.es.close();
  check(JSON.stringify(resumed.got) === '[{"id":"2","data":"two"},{"id":"3","data":"three"}]', 'resumed stream: ' + JSON.stringify(resumed.got));
  say('PASS');
} catch (err) {
  say('FAIL: ' + (err.stack || err));
  process.exitCode = 1;
}
