// Keeps one viewer page open in Debian's headless firefox-esr (WebDriver BiDi, puppeteer-core)
// for as long as a test wants to look at it, and answers its questions in lines of JSON
// (tests/common/firefox.rs `FirefoxPage`; tests/shaped_link_firefox.rs runs it inside a
// network namespace with `ip netns exec`):
//   1. once Firefox runs, with a tab open, it prints { ready: true };
//   2. then, for each line on stdin:
//      { goto: "<viewer page URL>" } → { live: true, frames } once the page says live and
//        decodes frames (frames decoded by then),
//      { js: "<function body>", args: [...] } → { value } (the body's return value, awaited:
//        the body reads its arguments as `arguments[0]`… as a WebDriver script does),
//      { screenshot: "<file.png>" } → { saved: true } (the <video> element),
//      and an error as { error: "…" } (the page stays open);
//   3. at the end of stdin, it closes Firefox and exits.
// Usage: node firefox-page.mjs <script run before the page's own, in every document>
// Every step has a deadline; the browser is closed on every path.

import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';
import { FIREFOX, prefs } from './firefox-prefs.mjs';

const [before] = process.argv.slice(2);
if (before === undefined) {
  console.error('usage: node firefox-page.mjs <script run before the page\'s own>');
  process.exit(2);
}

const DEADLINE_MS = 30_000;

async function until(what, check) {
  const end = Date.now() + DEADLINE_MS;
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

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: FIREFOX,
  headless: true,
  extraPrefsFirefox: prefs,
  protocolTimeout: DEADLINE_MS,
});
let failed = null;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  if (before) await page.evaluateOnNewDocument(before);
  console.log(JSON.stringify({ ready: true }));
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    let answer;
    try {
      const ask = JSON.parse(line);
      if (ask.goto) {
        await page.goto(ask.goto, { timeout: 20_000 });
        await until('the viewer page says live', () =>
          page.evaluate(() => window.whipcast && window.whipcast.state === 'live'));
        const start = await until('a first decoded frame', async () => {
          const n = await framesDecoded(page);
          return n > 0 ? n : null;
        });
        const frames = await until('frames keep being decoded', async () => {
          const n = await framesDecoded(page);
          return n > start + 10 ? n : null;
        });
        answer = { live: true, frames };
      } else if (ask.screenshot) {
        const video = await page.$('video');
        const png = await video.screenshot({ encoding: 'base64' });
        writeFileSync(ask.screenshot, Buffer.from(png, 'base64'));
        answer = { saved: true };
      } else {
        const value = await page.evaluate(
          (body, args) => new Function(body).apply(null, args),
          ask.js,
          ask.args || [],
        );
        answer = { value: value === undefined ? null : value };
      }
    } catch (e) {
      answer = { error: String(e && e.message || e) };
    }
    console.log(JSON.stringify(answer));
  }
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
