// The subscriber page, as a person uses it: it connects, shows a pushed event and acknowledges it,
// publishes from its own form, keeps its device id across visits, and fits a laptop and a phone.
// With a TOKEN (for the device DEVICE), the page gets it in its address's fragment, as a user
// would: it takes the device from it and takes the token out of the address bar.
// Usage: node page.mjs SERVER_URL CHANNEL DEVICE [TOKEN]
import { run, check, waitFor, artefact, push, say } from './harness.mjs';

const [base, channel, device, token] = process.argv.slice(2);

await run(async ({ context }) => {
  const page = await context.newPage();
  if (token) {
    await page.goto(`${base}/subscriber.html?channel=${channel}#token=${token}`);
    check(!page.url().includes(token) && !page.url().includes('#'), 'the token is taken out of the address: ' + page.url());
    check((await page.inputValue('#device')) === device, 'the device is the token\'s');
  } else {
    await page.goto(`${base}/subscriber.html?channel=${channel}&device=${device}`);
  }
  await waitFor('the feed to open', async () => (await page.textContent('#state')) === 'open');

  const auth = token ? { Authorization: 'Bearer ' + token } : {};
  const first = await push(base, channel, JSON.stringify({ n: 1, text: 'pushed from outside' }), auth);
  const row = page.locator('#events > li', { hasText: '#' + first });
  await waitFor('event ' + first + ' acknowledged on the page', async () => (await row.locator('.ack.ok').count()) === 1);
  check((await row.locator('pre').textContent()).includes('"pushed from outside"'), 'the event body is shown');
  say('ACKED ' + first);

  await page.fill('#publishBody', '{"n":2,"text":"published from the page"}');
  await page.click('#publishForm button[type=submit]');
  const note = await waitFor('the publish answer', async () => {
    const text = await page.textContent('#publishNote');
    return text.includes('published as #') || text.includes('not published') ? text : null;
  });
  check(note.includes('published as #'), 'publish from the page: ' + note);
  const second = Number(note.match(/#(\d+)/)[1]);
  const row2 = page.locator('#events > li', { hasText: '#' + second });
  await waitFor('event ' + second + ' acknowledged on the page', async () => (await row2.locator('.ack.ok').count()) === 1);
  say('ACKED ' + second);
  check((await page.textContent('#nReceived')) === '2' && (await page.textContent('#nAcked')) === '2', 'two received, two acknowledged');
  check((await page.textContent('#nDupes')) === '0', 'no duplicates');
  await page.screenshot({ path: artefact('page-laptop.png'), fullPage: true });
  if (token) return;

  // A second visit without a device in the address uses the one this browser keeps.
  const again = await context.newPage();
  await again.setViewportSize({ width: 390, height: 844 });
  await again.goto(`${base}/subscriber.html?channel=${channel}`);
  await waitFor('the second visit to open', async () => (await again.textContent('#state')) === 'open');
  check((await again.inputValue('#device')) === device, 'the device id is kept across visits');
  const stored = await again.evaluate(() => localStorage.getItem('pere.subscriber.device'));
  check(stored === device, 'the device id is in localStorage: ' + stored);
  // The device resumes after its last receipt: nothing is shown again.
  check((await again.textContent('#nReceived')) === '0', 'a known device resumes after what it acknowledged');
  await again.screenshot({ path: artefact('page-phone.png'), fullPage: true });
  const width = await again.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, 'the page fits a phone without scrolling sideways: ' + width);
});
