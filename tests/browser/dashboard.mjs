// The dashboard, as an operator uses it beside a device: a device page (the subscriber page)
// receives a pushed event and acknowledges it, and the dashboard shows the device online, then
// its receipt in the grid, then the device offline once its page is closed. Screenshots at a
// laptop's and a phone's size. Without tokens, a second recipient, FAILING, reports a failure
// for the same event: its cell is the failure's colour, not the success's. With tokens, the
// dashboard gets ADMIN_TOKEN and the device page DEVICE_TOKEN in their addresses' fragments, as
// a person would paste them.
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

  const failing = 'W-failing';
  if (!adminToken) {
    // A second recipient, which will report a failure.
    const put = await fetch(`${base}/devices/${channel}/${failing}`, { method: 'PUT' });
    check(put.ok, 'registered ' + failing + ': ' + put.status);
    await waitFor('the second recipient on the dashboard', async () =>
      (await dash.locator(`#devices li[data-device="${failing}"]`).count()) === 1);
  }

  const auth = adminToken ? { Authorization: 'Bearer ' + adminToken } : {};
  const id = await push(base, channel, JSON.stringify({ order: 7, text: 'from the test' }), auth);
  const row = devicePage.locator('#events > li', { hasText: '#' + id });
  await waitFor('the device page to acknowledge event ' + id, async () => (await row.locator('.ack.ok').count()) === 1);
  const cell = dash.locator(`#grid tr[data-event="${id}"] td[data-device="${device}"]`);
  await waitFor('the receipt in the grid', async () => (await cell.getAttribute('data-state').catch(() => null)) === 'acked');
  const okMark = cell.locator('.cell');
  check((await okMark.getAttribute('title')).includes('“ok”'), 'the cell tells the status');
  check((await okMark.getAttribute('data-class')) === 'ok', 'the status "ok" is a success');
  say('ACKED ' + id);
  if (!adminToken) {
    const receipt = await fetch(`${base}/feedback/${channel}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ device: failing, id, status: 'failed: disk full' }),
    });
    check(receipt.ok, 'the failure receipt: ' + receipt.status);
    const failed = dash.locator(`#grid tr[data-event="${id}"] td[data-device="${failing}"]`);
    await waitFor('the failure in the grid', async () => (await failed.getAttribute('data-state').catch(() => null)) === 'acked');
    const badMark = failed.locator('.cell');
    check((await badMark.getAttribute('data-class')) === 'failed', 'a failure is classed failed');
    check((await badMark.textContent()).startsWith('✗'), 'a failure is marked ✗: ' + await badMark.textContent());
    const colour = (mark) => mark.evaluate((e) => getComputedStyle(e).backgroundColor + ' ' + getComputedStyle(e).color);
    const [ok, bad] = [await colour(okMark), await colour(badMark)];
    check(ok !== bad, 'a failure is not coloured as a success: ' + ok + ' / ' + bad);
    await waitFor('the row to say a receipt failed', async () =>
      (await dash.getAttribute(`#grid tr[data-event="${id}"] td.sum`, 'class')).includes('failed'));
    say('FAILED ' + id);
  }
  const sum = adminToken ? '1/1' : '2/2';
  await waitFor('every receipt counted', async () => (await dash.textContent(`#grid tr[data-event="${id}"] td.sum`)) === sum);
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
