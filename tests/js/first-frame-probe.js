// Runs at the start of every document, before the viewer page's own scripts (Chromium:
// DevTools' Page.addScriptToEvaluateOnNewDocument; Firefox: BiDi's preload script). Times,
// in ms from this script, land in window.__firstFrame for benches/first_frame.rs and
// tests/first_picture.rs:
//   post, answer: the page's WHEP POST is sent, its 201 arrived (by wrapping fetch);
//   refused: the status (and Retry-After) of a POST not answered 201;
//   frame: the first video frame presented (requestVideoFrameCallback);
//   received, decoded: getStats first showed a video packet received, a frame decoded;
//   motion: getStats showed MOTION_FRAMES decoded (the picture moves, not one still);
//   atFrame: the decoder's counts when the first frame was presented (or at the next poll);
//   events: when the <video> element's loadedmetadata, playing, … first fired;
//   live: over the second after LIVE_AFTER_MS past the first frame, the mean jitter buffer
//     delay of the frames emitted (inbound-rtp jitterBufferDelay / jitterBufferEmittedCount)
//     and the median receive → presentation time of the frames presented (rVFC metadata,
//     Chromium only): whether the viewer is at the live edge by then;
//   done: everything above that will come has come (or the page is past DONE_AFTER_MS).
(() => {
  const MOTION_FRAMES = 10;
  const LIVE_AFTER_MS = 1000;
  const LIVE_WINDOW_MS = 1000;
  const DONE_AFTER_MS = LIVE_AFTER_MS + LIVE_WINDOW_MS;
  const t0 = performance.now();
  const since = () => performance.now() - t0;
  const ff = window.__firstFrame = {
    post: null, answer: null, frame: null, received: null, decoded: null, motion: null,
    presented: 0, atFrame: null, live: null, stats: null, done: false,
  };
  const fetch = window.fetch;
  window.fetch = function (input, init) {
    const url = String((input && input.url) || input);
    const offer = init && init.method === 'POST' && /\/stream\?id=/.test(url);
    if (offer && ff.post === null) ff.post = since();
    const res = fetch.apply(this, arguments);
    if (offer) {
      res.then((r) => {
        if (r.status === 201 && ff.answer === null) ff.answer = since();
        if (r.status !== 201) ff.refused = `${r.status} ${r.headers.get('Retry-After') || ''}`;
      }, () => {});
    }
    return res;
  };
  let video = null;
  let inbound = null; // the newest video inbound-rtp record
  const lags = [];
  let windowStart = null; // inbound-rtp at the start of the live window
  const presented = (now, meta) => {
    ff.presented += 1;
    if (ff.frame === null) {
      ff.frame = meta.presentationTime - t0;
      ff.atFrame = inbound && { decoded: inbound.framesDecoded, keyframes: inbound.keyFramesDecoded };
    }
    const after = meta.presentationTime - t0 - ff.frame;
    if (after >= LIVE_AFTER_MS && after < DONE_AFTER_MS && meta.receiveTime) {
      lags.push(meta.presentationTime - meta.receiveTime);
    }
    video.requestVideoFrameCallback(presented);
  };
  // When the element's own events first fired: where a picture decoded but not presented
  // waited.
  ff.events = {};
  document.addEventListener('DOMContentLoaded', () => {
    video = document.querySelector('video');
    if (!video) return;
    video.requestVideoFrameCallback(presented);
    for (const e of ['loadedmetadata', 'loadeddata', 'canplay', 'playing', 'resize', 'waiting']) {
      video.addEventListener(e, () => { if (!(e in ff.events)) ff.events[e] = Math.round(since()); });
    }
  });
  const poll = () => {
    const pc = window.whipcast && window.whipcast.pc;
    if (!pc) return setTimeout(poll, 10);
    pc.getStats().then((stats) => {
      stats.forEach((r) => {
        if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
        inbound = r;
        if (ff.frame !== null && ff.atFrame === null) {
          ff.atFrame = { decoded: r.framesDecoded, keyframes: r.keyFramesDecoded };
        }
        if (ff.received === null && r.packetsReceived > 0) ff.received = since();
        if (ff.decoded === null && r.framesDecoded > 0) ff.decoded = since();
        if (ff.motion === null && r.framesDecoded >= MOTION_FRAMES) ff.motion = since();
        ff.stats = {
          decoded: r.framesDecoded, keyframes: r.keyFramesDecoded, nacks: r.nackCount,
          plis: r.pliCount, lost: r.packetsLost, dropped: r.framesDropped,
          decoder: r.decoderImplementation,
        };
      });
      const after = ff.frame === null ? -1 : since() - ff.frame;
      if (inbound && after >= LIVE_AFTER_MS && windowStart === null) windowStart = inbound;
      if (inbound && after >= DONE_AFTER_MS && ff.live === null && windowStart) {
        const emitted = inbound.jitterBufferEmittedCount - windowStart.jitterBufferEmittedCount;
        const delay = inbound.jitterBufferDelay - windowStart.jitterBufferDelay;
        lags.sort((a, b) => a - b);
        ff.live = {
          jitterBufferMs: emitted > 0 ? (delay / emitted) * 1000 : null,
          receiveToPresentMs: lags.length ? lags[lags.length >> 1] : null,
          framesDecoded: inbound.framesDecoded - windowStart.framesDecoded,
        };
      }
      ff.done = ff.live !== null;
      setTimeout(poll, ff.done ? 100 : 10);
    }, () => setTimeout(poll, 10));
  };
  poll();
})();
