// Plays a whipcast viewer page in Debian's headless firefox-esr, driven over WebDriver BiDi
// (puppeteer-core, `browser: 'firefox'`), and prints what it saw as one line of JSON for
// tests/firefox.rs to assert on:
//   { state, size, framesAtLive, framesLater, audioAtLive, audioLater, screenshot: { mean, spread } }
// where audio* are the audio `inbound-rtp` counts { packets, samples, energy, duration }
// (samples decoded, not concealed: totalSamplesReceived - concealedSamples; energy and duration
// are totalAudioEnergy and totalSamplesDuration, absent when Firefox does not report them;
// audioLater is taken a second of audio or more after audioAtLive).
// Usage: node firefox-viewer.mjs <viewer page URL> <screenshot.png> [<hold seconds>]
// With hold seconds, it then stays on the page that long, and the JSON also has
//   timeline: [{ t, state, frames, packets, samples }, ...]
// (state with the page's title after it when not live, e.g. `reconnecting: Connection lost`)
// one look a second (t in Unix ms; frames decoded and audio so far): a long session
// (tests/long_sessions.rs).
// Every step has a deadline; the browser is closed on every path.

import { writeFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';
import { FIREFOX, prefs } from './firefox-prefs.mjs';

const [url, screenshotPath, holdArg] = process.argv.slice(2);
const holdSeconds = Number(holdArg || 0);
if (!url || !screenshotPath || !(holdSeconds >= 0)) {
  console.error('usage: node firefox-viewer.mjs <viewer page URL> <screenshot.png> [<hold seconds>]');
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

const audioReceived = (page) =>
  page.evaluate(async () => {
    const pc = window.whipcast && window.whipcast.pc;
    const n = { packets: 0, samples: 0 };
    if (!pc) return n;
    (await pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        n.packets = r.packetsReceived || 0;
        n.samples = (r.totalSamplesReceived || 0) - (r.concealedSamples || 0);
        n.energy = r.totalAudioEnergy;
        n.duration = r.totalSamplesDuration;
      }
    });
    return n;
  });

// Mean luma and its spread over a PNG, read back through a canvas of the page.
const pixels = (page, png) =>
  page.evaluate(async (b64) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const y = 0.2126 * d[i] + 0.7152 * d[i + 1] + 0.0722 * d[i + 2];
      sum += y; sq += y * y; n++;
    }
    const mean = sum / n;
    return { mean, spread: Math.sqrt(Math.max(0, sq / n - mean * mean)) };
  }, png);

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
  await page.goto(url);
  await until('the viewer page says live', () =>
    page.evaluate(() => window.whipcast && window.whipcast.state === 'live'));
  const framesAtLive = await until('a first decoded frame', async () => {
    const n = await framesDecoded(page);
    return n > 0 ? n : null;
  });
  const framesLater = await until('frames keep being decoded', async () => {
    const n = await framesDecoded(page);
    return n > framesAtLive + 10 ? n : null;
  });
  const audioAtLive = await until('audio packets received', async () => {
    const n = await audioReceived(page);
    return n.packets > 0 ? n : null;
  });
  const audioLater = await until('audio samples keep being decoded, a second more of them', async () => {
    const n = await audioReceived(page);
    const played = (n.duration || 0) >= (audioAtLive.duration || 0) + 1;
    return n.packets > audioAtLive.packets && n.samples > audioAtLive.samples && played ? n : null;
  });
  const size = await page.evaluate(() => {
    const v = document.querySelector('video');
    return [v.videoWidth, v.videoHeight];
  });
  const video = await page.$('video');
  const png = await video.screenshot({ encoding: 'base64' });
  writeFileSync(screenshotPath, Buffer.from(png, 'base64'));
  const screenshot = await pixels(page, png);
  // Looked at until the last look is the whole hold after the first: the time of a look is
  // taken before its reads, so a loop timed from before the first look could end short.
  const timeline = [];
  let holdUntil = null;
  while (holdSeconds > 0) {
    const t = Date.now();
    holdUntil ??= t + holdSeconds * 1000;
    const audio = await audioReceived(page);
    timeline.push({
      t,
      // With the title the page shows when not live: it says why.
      state: await page.evaluate(() => {
        const s = window.whipcast && window.whipcast.state;
        const title = document.getElementById('title');
        return s === 'live' ? s : `${s}: ${title ? title.textContent : ''}`;
      }),
      frames: await framesDecoded(page),
      packets: audio.packets,
      samples: audio.samples,
    });
    if (t >= holdUntil) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  const state = await page.evaluate(() => window.whipcast.state);
  const seen = { state, size, framesAtLive, framesLater, audioAtLive, audioLater, screenshot };
  console.log(JSON.stringify(holdSeconds > 0 ? { ...seen, timeline } : seen));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error(String(failed && failed.stack || failed));
  process.exit(1);
}
