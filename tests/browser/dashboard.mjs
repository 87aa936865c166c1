// The dashboard, as an operator uses it beside a device: a device page (the subscriber page)
// receives a pushed event and acknowledges it, and the dashboard shows the device online, then
// its receipt in the grid, then the device offline once its page is closed. Screenshots at a
// laptop's and a phone's size. With tokens, the dashboard gets ADMIN_TOKEN and the device page
// DEVICE_TOKEN in their addresses' fragments, as a person would paste them.
// Usage: node dashboard.mjs SERVER_URL CHANNEL DEVICE [ADMIN_TOKEN DEVICE_TOKEN]
import { run, check, waitFor, artefact, push, say } from './harness.mjs';

const [base, channel, device, adminToken, deviceToken] = process.argv.slice(2);

await run(async ({ context }) => {
  const dash = await context.newPage();
  await dash.setViewportSize({ width: 1280, height: 800 });
  await dash.goto(`${base}/dashboard?channel=${channel}` + (adminToken ? `#token=${adminToken}` : ''));
  check(!adminToken || !dash.url().includes(adminToken), 'the token is taken out of the address');
  await waitFor('the dashboard to go live', async () => (await dash.textContent('#connState')) === 'live');
  // The channel's panel shows once the snapshot is read, which may come just after 'live'.
  await waitFor('no device yet', async () => dash.isVisible('#noDevices'));

  const devicePage = await context.newPage();
  await devicePage.goto(`${base}/subscriber.html?channel=${channel}` +
    (deviceToken ? `#token=${deviceToken}` : `&device=${device}`));
  await waitFor('the device page to open its feed', async () => (await devicePage.textContent('#state')) === 'open');

  const card = dash.locator(`#devices li[data-device="${device}"]`);
  await waitFor('the device online on the dashboard', async () => (await card.getAttribute('data-online').catch(() => null)) === 'true');
  check((await card.textContent()).includes('online'), 'the card says online');
  await waitFor('its channel listed with a feed', async () =>
    (await dash.locator(`#channelList button[data-channel="${channel}"]`).textContent().catch(() => '')).includes('1 feed'));
  say('ONLINE ' + device);

  const auth = adminToken ? { Authorization: 'Bearer ' + adminToken } : {};
  const id = await push(base, channel, JSON.stringify({ order: 7, text: 'from the test' }), auth);
  const row = devicePage.locator('#events > li', { hasText: '#' + id });
  await waitFor('the device page to acknowledge event ' + id, async () => (await row.locator('.ack.ok').count()) === 1);
  const cell = dash.locator(`#grid tr[data-event="${id}"] td[data-device="${device}"]`);
  await waitFor('the receipt in the grid', async () => (await cell.getAttribute('data-state').catch(() => null)) === 'acked');
  check((await cell.locator('.cell').getAttribute('title')).includes('“ok”'), 'the cell tells the status');
  check((await dash.textContent(`#grid tr[data-event="${id}"] td.sum`)) === '1/1', 'one of one acknowledged');
  say('ACKED ' + id);
  // Throughput and latency reach the figures within a second or two.
  await waitFor('the latency figure', async () => /\d+ ms|\d+\.\d+ s/.test(await dash.textContent('#kLatency')));
  await dash.screenshot({ path: artefact('dashboard-laptop.png') });

  await devicePage.close();
  await waitFor('the device offline on the dashboard', async () => (await card.getAttribute('data-online')) === 'false');
  check((await card.textContent()).includes('offline'), 'the card says offline');
  say('OFFLINE ' + device);

  await dash.setViewportSize({ width: 390, height: 844 });
  await dash.screenshot({ path: artefact('dashboard-phone.png'), fullPage: true });
  const width = await dash.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, 'the page fits a phone without scrolling sideways: ' + width);
});
