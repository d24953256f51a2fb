// How the viewer's link fares: a notice over the picture when the server says this viewer's
// connection has stayed slower than what it is sent (GET <session>/layer, engine/slow.rs),
// and a stats overlay (the Stats button, or the "s" key) with the viewer's layer, the
// server's view of its link and the browser's own figures (getStats, inbound video).
// Works with what Chromium and Firefox both report; a figure one of them lacks shows "–".

const $ = (id) => document.getElementById(id);

// States in which the viewer has a session whose link the server can judge: live, and also
// still starting (a link too slow for the first keyframe is the case the notice is for).
const WATCHED = new Set(['live', 'connecting', 'reconnecting']);
// While watching the server is asked every 4 s whether this viewer is slow: the server flags a
// viewer only after 10 s below what it is sent, so the notice comes at most 4 s after that
// and goes at most 4 s after the flag clears, and one small request per viewer every 4 s
// costs the server one lookup (the viewer's own packets are hundreds a second).
const NOTICE_POLL_MS = 4000;
// While the overlay shows, every 2 s: figures averaged over 2 s are steady enough to read.
const STATS_POLL_MS = 2000;

const kbps = (bps) => `${Math.round(bps / 1000).toLocaleString('en')} kb/s`;
const dash = (v, f = String) => (v === undefined || v === null || Number.isNaN(v) ? '–' : f(v));

export function watchLink(player) {
  const notice = $('slow');
  const overlay = $('stats');
  const toggle = $('statsToggle');
  let timer = null;
  let last = null; // the previous inbound-rtp video figures, for rates
  let layer = null; // the server's latest answer

  const layerUrl = () => player.session && (player.layerUrl || `${player.session}/layer`);

  const watching = () => Boolean(player.session) && WATCHED.has(player.state);

  function showNotice(l) {
    const slow = watching() && l && l.slow;
    notice.classList.toggle('hidden', !slow);
    if (!slow) return;
    // With simulcast the server flags a viewer in Auto only on the smallest layer; one that
    // pinned a layer can still choose a smaller one.
    const what = l.rid === null ? 'this broadcast'
      : l.auto ? 'even the smallest quality of this broadcast' : 'the quality you chose';
    const have = l.estimate_bps ? `, about ${kbps(l.estimate_bps)} available` : '';
    const hint = l.rid !== null && !l.auto ? ' Choose a lower quality, or Auto.' : '';
    notice.textContent = `Your connection is slower than ${what} (${kbps(l.needed_bps)} needed${have}): the picture may freeze.${hint}`;
  }

  async function askServer() {
    const url = layerUrl();
    if (!url || !watching()) return null;
    try {
      const res = await fetch(url, { cache: 'no-store' });
      return res.ok ? await res.json() : null;
    } catch (_) {
      return null;
    }
  }

  // The browser's figures for the video it receives, as rates since the last reading.
  async function askBrowser() {
    const pc = player.pc;
    if (!pc) return null;
    let rtp = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && (s.kind || s.mediaType) === 'video') rtp = s;
    });
    if (!rtp) return null;
    const now = { pc, t: performance.now(), bytes: rtp.bytesReceived || 0, frames: rtp.framesDecoded || 0 };
    const prev = last && last.pc === pc ? last : null;
    last = now;
    const seconds = prev ? (now.t - prev.t) / 1000 : 0;
    return {
      bps: seconds > 0 ? ((now.bytes - prev.bytes) * 8) / seconds : null,
      fps: rtp.framesPerSecond ?? (seconds > 0 ? (now.frames - prev.frames) / seconds : null),
      dropped: rtp.framesDropped,
      freezes: rtp.freezeCount,
      lost: rtp.packetsLost,
    };
  }

  function showStats(l, b) {
    const row = (name, value) => {
      const div = document.createElement('div');
      const label = document.createElement('span');
      label.textContent = `${name} `;
      div.append(label, value);
      return div;
    };
    const simulcast = l && l.rid !== null;
    const height = l && l.height ? `${l.height}p ` : '';
    const moving = l && l.target !== null ? `, moving to ${l.target}` : '';
    const layer = !l ? '–' : simulcast ? `${height}(layer ${l.rid})${moving}` : `${height}(one layer)`;
    overlay.replaceChildren(
      row('Layer', layer),
      // Auto or pinned means something only with layers to choose from.
      ...(simulcast ? [row('Mode', l.auto ? 'Auto' : 'Pinned')] : []),
      row('Server estimate', dash(l && l.estimate_bps, kbps)),
      row('Needed', dash(l && l.needed_bps, kbps)),
      row('Received', dash(b && b.bps, kbps)),
      row('Decoded', dash(b && b.fps, (f) => `${f.toFixed(1)} fps`)),
      row('Dropped', `${dash(b && b.dropped)} frames, ${dash(b && b.freezes)} freezes`),
      row('Packets lost', dash(b && b.lost)),
    );
  }

  async function tick() {
    const shown = !overlay.classList.contains('hidden');
    if (!document.hidden || shown) {
      const [l, b] = await Promise.all([askServer(), shown ? askBrowser().catch(() => null) : null]);
      layer = l;
      showNotice(layer);
      if (shown) showStats(layer, b);
    }
    timer = setTimeout(tick, shown ? STATS_POLL_MS : NOTICE_POLL_MS);
  }

  function setShown(show) {
    overlay.classList.toggle('hidden', !show);
    toggle.setAttribute('aria-pressed', String(show));
    clearTimeout(timer);
    last = null;
    if (show) showStats(layer, null);
    tick();
  }

  toggle.addEventListener('click', () => setShown(overlay.classList.contains('hidden')));
  addEventListener('keydown', (e) => {
    if (e.key !== 's' || e.ctrlKey || e.metaKey || e.altKey || (e.target.closest && e.target.closest('select, input, textarea'))) return;
    setShown(overlay.classList.contains('hidden'));
  });
  // Tests (and the console) read what the page was last told.
  player.link = () => layer;
  tick();
}
