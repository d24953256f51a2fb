// The WHEP player of the viewer page: POST an offer to /stream?id=<view ID>, play the answer,
// follow the server's events (WHEP SSE extension) and say at every moment what is going on.
// Tests read window.whipcast.pc and window.whipcast.state.

import { openEvents } from './events.js';
import { watchLink } from './link.js';

const $ = (id) => document.getElementById(id);
const viewId = new URLSearchParams(location.search).get('id') || '';
const video = $('video');
const player = {
  pc: null, state: 'connecting', session: null, events: null, ended: false, iceLost: false, timer: null, backoff: 1000,
  gatherFirst: false,
};
window.whipcast = player;

const OVERLAY_STATES = new Set(['connecting', 'waiting', 'ended', 'evicted', 'error']);
// ICE 'disconnected' often heals by itself within a few seconds (a lost consent check on
// Wi-Fi); 'failed' never does. Waiting this long before starting over avoids a needless rejoin.
const DISCONNECTED_GRACE_MS = 2000;
// Retry-After is honoured, but never more than this: the page should feel alive.
const MAX_RETRY_MS = 5000;

// Server details are lower-case sentence parts (`detail` of RFC 9457 problem+json).
const sentence = (s) => (s ? s[0].toUpperCase() + s.slice(1).replace(/([^.])$/, '$1.') : '');

function show(state, title, detail = '', { spinner = false, rejoin = false } = {}) {
  player.state = state;
  $('state').textContent = state === 'live' ? 'LIVE' : state;
  $('state').className = `badge ${state}`;
  $('title').textContent = title;
  $('detail').textContent = detail;
  $('spinner').classList.toggle('hidden', !spinner);
  $('rejoin').classList.toggle('hidden', !rejoin);
  // Reconnecting keeps the last frame visible under a small notice; live shows only video.
  $('overlay').classList.toggle('hidden', !OVERLAY_STATES.has(state) && state !== 'reconnecting');
  $('overlay').style.background = state === 'reconnecting' ? 'rgba(8,10,16,.45)' : '';
}

// Leaves the current session. A session we abandon ourselves is DELETEd, or it would hold a
// viewer place (and push the oldest viewer out) until the server notices it is gone.
function teardown() {
  clearTimeout(player.timer);
  if (player.events) player.events.close();
  if (player.pc) player.pc.close();
  if (player.session) fetch(player.session, { method: 'DELETE' }).catch(() => {});
  player.events = null;
  player.pc = null;
  player.session = null;
  $('viewers').textContent = '';
}

function retry(ms) {
  clearTimeout(player.timer);
  player.timer = setTimeout(join, ms);
}

// The next retry delay: the server's Retry-After (seconds) if it sent one, else our backoff.
function retryAfter(header) {
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : player.backoff;
  player.backoff = Math.min(player.backoff * 2, MAX_RETRY_MS);
  return Math.min(ms, MAX_RETRY_MS);
}

// whipcast is ICE-lite: it learns the browser's address from the browser's connectivity
// checks (peer-reflexive), so the offer goes out at once instead of after ICE gathering (which
// costs 200 ms or more). Nothing is trickled: the server takes no candidates from PATCH.
// Should a network need the candidates in the offer after all (no ICE connection this long
// after the answer), the page offers again with them, for the rest of its life.
const UNGATHERED_CONNECT_MS = 3000;

function gathered(pc, limitMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, limitMs);
  });
}

function join() {
  attempt().catch((e) => {
    // A browser-side failure (SDP the browser refuses, closed PC): say so and start over.
    show('error', 'Something went wrong', sentence(String(e && e.message || e)) + ' Retrying…');
    retry(retryAfter(null));
  });
}

async function attempt() {
  teardown();
  if (!player.ended && player.state !== 'waiting') show('connecting', 'Connecting…', '', { spinner: true });
  const pc = new RTCPeerConnection();
  player.pc = pc;
  player.iceLost = false;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const stream = new MediaStream();
  pc.ontrack = (e) => {
    stream.addTrack(e.track);
    video.srcObject = stream;
    video.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (pc !== player.pc) return;
    const s = pc.connectionState;
    if (s === 'failed' || s === 'disconnected') {
      player.iceLost = true;
      show('reconnecting', 'Connection lost', 'Reconnecting…', { spinner: true });
      clearTimeout(player.timer);
      player.timer = setTimeout(() => restartThenRejoin(pc), s === 'failed' ? 0 : DISCONNECTED_GRACE_MS);
    } else if (s === 'connected' && player.iceLost) {
      // Healed within the grace period: keep this session.
      player.iceLost = false;
      clearTimeout(player.timer);
      show('live', '');
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  if (player.gatherFirst) await gathered(pc, 1000);
  let res;
  try {
    res = await fetch(`/stream?id=${encodeURIComponent(viewId)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
  } catch (_) {
    show('reconnecting', 'Cannot reach the server', 'Retrying…', { spinner: true });
    return retry(3000);
  }
  if (pc !== player.pc) return;
  if (res.status === 201) {
    player.backoff = 1000;
    // The origin may have redirected us (307) to an edge: the session and its events live
    // where the answer came from.
    const base = res.redirected ? res.url : null;
    const loc = res.headers.get('Location');
    player.session = base ? new URL(loc, base).href : loc;
    player.etag = res.headers.get('ETag');
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    if (!player.gatherFirst) fallBackToGathering(pc);
    // Events are an extra: without them the picture still plays.
    subscribe(res.headers.get('Link'), base).catch(() => {});
    if (player.state !== 'live') show('connecting', 'Starting video…', '', { spinner: true });
    return;
  }
  const problem = await res.json().catch(() => ({}));
  pc.close();
  if (res.status === 409) {
    if (player.ended) {
      show('ended', 'The broadcast has ended', 'This page starts playing again by itself when it comes back.');
    } else {
      show('waiting', 'Waiting for the broadcast to start…', 'This page starts playing by itself when it does.', { spinner: true });
    }
    return retry(retryAfter(res.headers.get('Retry-After')));
  }
  if (res.status === 404) return show('error', 'This viewer link is not valid', 'Ask the broadcaster for the current link.');
  if (res.status === 422) return show('error', 'This browser cannot play this broadcast', sentence(problem.detail));
  if (res.status === 503) {
    show('waiting', 'The broadcast is full right now', sentence(problem.detail) || 'Retrying…', { spinner: true });
    return retry(retryAfter(res.headers.get('Retry-After')));
  }
  show('error', 'Something went wrong', `${sentence(problem.detail) || `The server answered ${res.status}.`} Retrying…`);
  retry(retryAfter(res.headers.get('Retry-After')));
}

// How long an ICE restart may take to bring the connection back before a new session is made.
const RESTART_WAIT_MS = 5000;

// The network changed under the session (Wi-Fi to cellular, a NAT rebinding): try an ICE
// restart on the same session first (same tracks, the picture continues), and make a new
// session only if the restart is refused or does not reconnect in time.
function restartThenRejoin(pc) {
  if (pc !== player.pc) return;
  restartIce(pc).then(() => retry(RESTART_WAIT_MS), () => retry(0));
}

// ICE restart (RFC 9725 §4.3.2): new local ICE credentials PATCHed to the session with
// If-Match; the server answers with its own new credentials, applied to its answer.
async function restartIce(pc) {
  if (!player.session) throw new Error('no session to restart');
  pc.restartIce();
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const line = (sdp, name) => (sdp.match(new RegExp(`a=${name}:(\\S+)`)) || [])[1];
  const frag = `a=ice-ufrag:${line(offer.sdp, 'ice-ufrag')}\r\na=ice-pwd:${line(offer.sdp, 'ice-pwd')}\r\n`
    + `m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:${line(offer.sdp, 'mid')}\r\n`;
  const res = await fetch(player.session, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': player.etag || '*' },
    body: frag,
  });
  if (res.status !== 200) throw new Error(`ICE restart answered ${res.status}`);
  player.etag = res.headers.get('ETag') || player.etag;
  const answer = await res.text();
  const sdp = pc.remoteDescription.sdp
    .replace(/a=ice-ufrag:\S+/g, `a=ice-ufrag:${line(answer, 'ice-ufrag')}`)
    .replace(/a=ice-pwd:\S+/g, `a=ice-pwd:${line(answer, 'ice-pwd')}`);
  await pc.setRemoteDescription({ type: 'answer', sdp });
}
// Tests (and the console) can restart ICE on the current session.
player.restartIce = () => restartIce(player.pc);

// Offers again with gathered candidates if an offer without them has not connected.
function fallBackToGathering(pc) {
  setTimeout(() => {
    const ice = pc.iceConnectionState;
    if (pc !== player.pc || ice === 'connected' || ice === 'completed') return;
    player.gatherFirst = true;
    retry(0);
  }, UNGATHERED_CONNECT_MS);
}

/// The WHEP server-sent-events extension: POST the wanted events to the Link URL, then follow
/// the stream it gives back.
async function subscribe(link, base) {
  const match = link && link.match(/<([^>]+)>\s*;[^,]*rel="urn:ietf:params:whep:ext:core:server-sent-events"/);
  if (!match) return;
  if (base) match[1] = new URL(match[1], base).href;
  const wanted = ['active', 'inactive', 'viewercount', 'reconnect', 'reconnecting', 'evicted', 'revoked', 'layers'];
  const layer = link.match(/<([^>]+)>\s*;[^,]*rel="urn:ietf:params:whep:ext:core:layer"/);
  player.layerUrl = layer ? (base ? new URL(layer[1], base).href : layer[1]) : null;
  quality.value = ''; // a new session starts on the server's choice
  const res = await fetch(match[1], { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(wanted) });
  if (res.status !== 201) return;
  const stream = res.headers.get('Location') || match[1];
  // One event stream per browser for all its tabs of this server (events.js).
  const events = openEvents(base ? new URL(stream, match[1]).href : stream, player.session);
  player.events = events;
  const data = (e) => { try { return JSON.parse(e.data); } catch (_) { return {}; } };
  events.addEventListener('active', () => {
    player.ended = false;
    if (player.state === 'reconnecting') show('live', '');
  });
  events.addEventListener('reconnecting', () => {
    show('reconnecting', 'The broadcaster is reconnecting…', 'Stay on this page: it continues by itself.', { spinner: true });
  });
  events.addEventListener('viewercount', (e) => {
    const n = data(e).viewercount;
    $('viewers').textContent = n === 1 ? '1 watching' : `${n} watching`;
  });
  events.addEventListener('layers', (e) => showLayers(data(e)['0'] || []));
  events.addEventListener('inactive', () => {
    player.ended = true;
    teardown();
    show('ended', 'The broadcast has ended', 'This page starts playing again by itself when it comes back.');
    retry(2000);
  });
  // WHEP draft: the server asks the player to make a new session (e.g. it moved the stream).
  events.addEventListener('reconnect', () => {
    show('reconnecting', 'Reconnecting…', '', { spinner: true });
    retry(0);
  });
  events.addEventListener('evicted', (e) => {
    const max = data(e).max_viewers;
    player.session = null; // the server already closed it
    teardown();
    show('evicted', 'A newer viewer took your place', `This broadcast allows ${max} viewers at a time.`, { rejoin: true });
  });
  events.addEventListener('revoked', () => {
    player.session = null; // the server already closed it
    teardown();
    show('ended', 'This viewer link was replaced', 'Ask the broadcaster for the new link.');
  });
  events.onerror = () => {
    // After a named final event the player has already moved on (player.events is null). An
    // error on the live stream means the server went away (restart, network): start over.
    if (player.events !== events) return;
    events.close();
    player.events = null;
    show('reconnecting', 'Lost the connection to the server', 'Reconnecting…', { spinner: true });
    retry(1000);
  };
}

// The quality menu (a simulcast broadcast only): Auto lets the server choose; a layer, by its
// height, pins it (the WHEP draft's layer selection, POSTed to the session's layer URL).
const quality = $('quality');
function showLayers(layers) {
  const arriving = layers.filter((l) => l.bitrate > 0);
  quality.classList.toggle('hidden', arriving.length < 2 || !player.layerUrl);
  const chosen = quality.value;
  quality.replaceChildren(new Option('Auto', ''), ...arriving.map((l) =>
    new Option(l.height ? `${l.height}p` : `layer ${l.rid}`, l.rid)));
  quality.value = arriving.some((l) => l.rid === chosen) ? chosen : '';
}
quality.addEventListener('change', () => {
  if (!player.layerUrl) return;
  const body = quality.value ? { mediaId: '0', rid: quality.value } : { mediaId: '0' };
  fetch(player.layerUrl, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
    .catch(() => {});
});

video.addEventListener('playing', () => {
  if (player.state === 'connecting' || player.state === 'waiting') show('live', '');
});

$('unmute').addEventListener('click', () => {
  video.muted = !video.muted;
  $('unmute').textContent = video.muted ? 'Unmute' : 'Mute';
  if (!video.muted) video.play().catch(() => {});
});
$('fullscreen').addEventListener('click', () => {
  const stage = $('stage');
  if (document.fullscreenElement) document.exitFullscreen();
  else (stage.requestFullscreen || stage.webkitRequestFullscreen || (() => {})).call(stage);
});
$('rejoin').addEventListener('click', () => { player.ended = false; join(); });
addEventListener('pagehide', () => {
  // keepalive: the request must outlive the page.
  if (player.session) fetch(player.session, { method: 'DELETE', keepalive: true }).catch(() => {});
  player.session = null;
});
// Back/forward cache: the page returns but its session was DELETEd on pagehide.
addEventListener('pageshow', (e) => { if (e.persisted) join(); });

join();
watchLink(player);
