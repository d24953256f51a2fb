// Opens the broadcaster page, then one viewer page in several tabs, of one headless
// firefox-esr (WebDriver BiDi, puppeteer-core) for tests/browser_tabs.rs, and talks to it in
// lines of JSON:
//   1. once every tab plays: { tabs: [{ firstFrame, frames, protocol }] }
//      (firstFrame: ms from navigation to the first frame, as the probe script recorded it);
//   2. then it waits for a line on stdin (the test stopped the broadcast) and prints
//      { ended: [ms since the epoch at which each tab said "ended", or null] }.
// Usage: node firefox-tabs.mjs <broadcaster page URL> <viewer page URL> <tabs> <probe script>
// Every step has a deadline; the browser is closed on every path.

import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';
import { FIREFOX, prefs } from './firefox-prefs.mjs';

const [panel, url, count, probe] = process.argv.slice(2);
if (!panel || !url || !count || !probe) {
  console.error('usage: node firefox-tabs.mjs <broadcaster page URL> <viewer page URL> <tabs> <probe script>');
  process.exit(2);
}

const DEADLINE_MS = 30_000;
const ENDED_DEADLINE_MS = 10_000;

async function until(what, check, limit = DEADLINE_MS) {
  const end = Date.now() + limit;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > end) throw new Error('never happened: ' + what);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const framesDecoded = (page) =>
  page.evaluate(async () => {
    const pc = window.whipcast && window.whipcast.pc;
    if (!pc) return 0;
    let n = 0;
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') n = r.framesDecoded || 0;
    });
    return n;
  });

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: FIREFOX,
  headless: true,
  acceptInsecureCerts: true,
  extraPrefsFirefox: {
    ...prefs,
    // Background tabs keep decoding and running timers as a visible one would.
    'media.suspend-bkgnd-video.enabled': false,
    'dom.min_background_timeout_value': 4,
  },
  protocolTimeout: DEADLINE_MS,
});
let failed = null;
try {
  const broadcaster = await browser.newPage();
  await broadcaster.goto(panel, { timeout: 20_000 });
  await until('the broadcaster page says live', () =>
    broadcaster.evaluate(() => document.getElementById('state').textContent === 'live'));
  const pages = [];
  for (let i = 0; i < Number(count); i++) {
    const page = await browser.newPage();
    await page.evaluateOnNewDocument(probe);
    // A page that cannot get a connection fails here.
    await page.goto(url, { timeout: 20_000 });
    pages.push(page);
  }
  const tabs = [];
  for (const page of pages) {
    await until('the viewer tab says live', () =>
      page.evaluate(() => window.whipcast && window.whipcast.state === 'live'));
    const start = await until('a first decoded frame', async () => {
      const n = await framesDecoded(page);
      return n > 0 ? n : null;
    });
    const frames = await until('frames keep being decoded', async () => {
      const n = await framesDecoded(page);
      return n > start + 10 ? n : null;
    });
    const firstFrame = await until('the probe saw the first frame', () =>
      page.evaluate(() => window.__probe && window.__probe.firstFrame));
    const protocol = await page.evaluate(
      () => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    tabs.push({ firstFrame, frames, protocol });
  }
  console.log(JSON.stringify({ tabs }));
  await stdinLines.next();
  const ended = [];
  for (const page of pages) {
    ended.push(await until('the viewer tab says ended', () =>
      page.evaluate(() => window.__probe && window.__probe.ended), ENDED_DEADLINE_MS).catch(() => null));
  }
  console.log(JSON.stringify({ ended }));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error(String(failed && failed.stack || failed));
  process.exit(1);
}
process.exit(0);
