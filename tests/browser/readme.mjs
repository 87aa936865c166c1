// The README's pere.js snippets, as the README has them (read from README.md at each run, so the
// snippets can never drift from what is tested), in Chromium, the way a newcomer runs them.
// Usage: node readme.mjs MODE [SERVER_URL]
//   same:    SERVER_URL given; the first snippet as a module script in a page of the server
//   cross:   prints ORIGIN <origin of a page served here>, hears the server's URL (started with
//            --allow-origin for that origin), runs the second snippet in that page
//   refused: SERVER_URL given (a server that allows no origin); the second snippet in a page of
//            another origin and in a file:// page; prints OPENED, then hears "seen" once the test
//            found the server's CORS> lines
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, check, waitFor, artefact, push, say, hear, WAIT_MS } from './harness.mjs';

const [mode, given] = process.argv.slice(2);

/** The README's address of the server, which the test's server replaces in the snippets. */
const README_SERVER = 'http://127.0.0.1:4567';

/** The ```js blocks of the README's "## pere.js" section, in order. */
function snippets() {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const start = readme.indexOf('\n## pere.js\n');
  check(start >= 0, 'the README has a "## pere.js" section');
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const blocks = [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
  check(blocks.length === 2, 'two js snippets in the pere.js section, not ' + blocks.length);
  return blocks;
}

/** A page holding `code` as its module script. */
function pageWith(code) {
  return `<!doctype html><meta charset="utf-8"><title>README snippet</title><body>\n<script type="module">\n${code}</script>\n`;
}

/** Serves `html` at / on a free loopback port; returns the server and its origin. */
async function servePage(html) {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** The answer to the page's first receipt request: the page is kept open until its receipt is
 *  in, or closing it would race the request the snippet's subscription sends for it. */
function receiptAnswered(page) {
  return page.waitForResponse(
    (r) => r.request().method() === 'POST' && r.url().includes('/feedback/CHANNEL_1'),
    { timeout: WAIT_MS },
  );
}

/** Every console message of `page`, as text. */
function consoleOf(page) {
  const lines = [];
  page.on('console', (m) => lines.push(m.text()));
  return lines;
}

const [sameOrigin, otherOrigin] = snippets();

await run(async ({ context }) => {
  const page = await context.newPage();
  const logs = consoleOf(page);
  if (mode === 'same') {
    const base = given;
    // Any page of the server's origin: the snippet imports '/pere.js' from there.
    await page.goto(`${base}/health`);
    const receipted = receiptAnswered(page);
    await page.addScriptTag({ type: 'module', content: sameOrigin });
    await waitFor('the feed to open', async () => logs.includes('open'));
    await waitFor('the published event', async () => logs.some((l) => l.startsWith('published as ')));
    const published = logs.find((l) => l.startsWith('published as ')).slice('published as '.length);
    await waitFor('the event ' + published, async () => logs.includes(`${published} {"hello":"world"}`));
    say('PUBLISHED ' + published);
    say('RECEIVED ' + published);
    check((await receipted).ok(), 'the receipt was answered 2xx');
  } else if (mode === 'cross') {
    let base = null;
    const { server, origin } = await servePage(() => pageWith(otherOrigin.replaceAll(README_SERVER, base)));
    try {
      say('ORIGIN ' + origin);
      base = await hear();
      const id = await push(base, 'CHANNEL_1', 'from another origin');
      const receipted = receiptAnswered(page);
      await page.goto(origin + '/');
      await waitFor('the event ' + id, async () => logs.includes(`${id} from another origin`));
      say('RECEIVED ' + id);
      check((await receipted).ok(), 'the receipt was answered 2xx');
    } finally {
      server.close();
    }
  } else if (mode === 'refused') {
    const base = given;
    const code = otherOrigin.replaceAll(README_SERVER, base);
    const { server, origin } = await servePage(() => pageWith(code));
    const dir = mkdtempSync(join(tmpdir(), 'pere-readme-'));
    try {
      const file = join(dir, 'page.html');
      writeFileSync(file, pageWith(code));
      await page.goto(origin + '/');
      const local = await context.newPage();
      const localLogs = consoleOf(local);
      await local.goto('file://' + file);
      // What the newcomer saw: a CORS error in the console, and nothing else.
      await waitFor('a CORS error in the page', async () => logs.some((l) => l.includes('CORS')));
      await waitFor('a CORS error in the file page', async () => localLogs.some((l) => l.includes('CORS')));
      say('OPENED ' + origin);
      check((await hear()) === 'seen', 'the test saw the server say why');
      await page.screenshot({ path: artefact('readme-refused.png') });
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  } else {
    throw new Error('unknown mode ' + mode);
  }
});
