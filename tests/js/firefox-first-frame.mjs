// One first visit in Firefox: a freshly started headless firefox-esr (a new profile, as
// puppeteer makes for every launch) loads a viewer page once with first-frame-probe.js run
// before the page's scripts, and prints the probe's record (window.__firstFrame) as one line
// of JSON once it is done or `limit_ms` after the load. For benches/first_frame.rs.
// Usage: node firefox-first-frame.mjs <viewer page URL> <limit_ms>
// The browser is closed on every path.

import { readFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';
import { FIREFOX, prefs } from './firefox-prefs.mjs';

const [url, limit] = process.argv.slice(2);
if (!url || !limit) {
  console.error('usage: node firefox-first-frame.mjs <viewer page URL> <limit_ms>');
  process.exit(2);
}
const probe = readFileSync(new URL('./first-frame-probe.js', import.meta.url), 'utf8');

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: FIREFOX,
  headless: true,
  extraPrefsFirefox: prefs,
  protocolTimeout: 30_000,
});
let failed = null;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  await page.evaluateOnNewDocument(probe);
  await page.goto(url);
  const end = Date.now() + Number(limit);
  let record = null;
  for (;;) {
    record = await page.evaluate(() => window.__firstFrame || null);
    if ((record && record.done) || Date.now() > end) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log(JSON.stringify(record));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error(String(failed && failed.stack || failed));
  process.exit(1);
}
