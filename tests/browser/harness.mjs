// The harness of the browser tests: Debian's Chromium driven by playwright-core, never a
// downloaded browser. Each script is run by a Rust test (tests/support/node.rs) against a real
// server: `node SCRIPT.mjs URL ...`; it prints what it saw, "PASS" at the end, and exits 1 with
// "FAIL: ..." on the first broken expectation. Screenshots go to $PERE_ARTEFACTS.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** How long any single wait may take before the script fails. */
export const WAIT_MS = 20000;

/** The flags Chromium runs with: no sandbox (tests may run as root), nothing fetched from the internet. */
export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];

/** Starts headless Chromium; every page error and console error is reported on stderr. */
export async function launch() {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  context.on('page', (page) => watch(page, errors));
  return { browser, context, errors };
}

function watch(page, errors) {
  page.on('pageerror', (e) => { errors.push(e.message); console.error('page error:', e.message); });
  page.on('console', (m) => { if (m.type() === 'error') console.error('console:', m.text()); });
}

/** Where a test writes its artefacts (screenshots): $PERE_ARTEFACTS, else ./artefacts. */
export function artefact(name) {
  const dir = process.env.PERE_ARTEFACTS || 'artefacts';
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}

/** Fails the script unless `condition` holds. */
export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits until `probe()` returns a truthy value (and returns it), or fails after WAIT_MS. */
export async function waitFor(what, probe, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('waited ' + timeoutMs + ' ms for ' + what);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Tells the Rust test something (a line on stdout it may wait for). */
export function say(line) {
  console.log(line);
}

/** Waits for a line on stdin from the Rust test (after it restarted the server, say). */
export function hear() {
  return new Promise((resolve) => {
    let buffer = '';
    const onData = (chunk) => {
      buffer += chunk;
      const end = buffer.indexOf('\n');
      if (end >= 0) {
        process.stdin.off('data', onData);
        // An open stdin would keep Node running after the script ends.
        process.stdin.destroy();
        resolve(buffer.slice(0, end));
      }
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', onData);
    process.stdin.resume();
  });
}

/** Runs a test body; prints PASS, or FAIL and the reason (exit 1). Closes the browser either way. */
export async function run(body) {
  let browser = null;
  try {
    const launched = await launch();
    browser = launched.browser;
    await body(launched);
    check(launched.errors.length === 0, 'errors in the page: ' + launched.errors.join('; '));
    say('PASS');
  } catch (err) {
    console.log('FAIL: ' + (err && err.stack ? err.stack : err));
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
}

/** Publishes from Node (the test's own publisher, outside the browser). */
export async function push(base, channel, body, headers = {}) {
  // With a token the publisher is the token's device: a `device` header naming another is refused.
  const publisher = headers.Authorization ? {} : { device: 'P-test' };
  const res = await fetch(base + '/push/' + channel, { method: 'POST', headers: { ...publisher, ...headers }, body });
  if (!res.ok) throw new Error('push answered ' + res.status + ' ' + await res.text());
  return (await res.json()).id;
}
