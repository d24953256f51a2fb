// The WHEP player of the viewer page: POST an offer to /stream?id=<view ID>, play the answer,
// follow the server's events (WHEP SSE extension) and say at every moment what is going on.
// Tests read window.whipcast.pc and window.whipcast.state.

const $ = (id) => document.getElementById(id);
const viewId = new URLSearchParams(location.search).get('id') || '';
const video = $('video');
const player = { pc: null, state: 'connecting', session: null, events: null, ended: false, timer: null, backoff: 1000 };
window.whipcast = player;

const OVERLAY_STATES = new Set(['connecting', 'waiting', 'ended', 'evicted', 'error']);

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

function teardown() {
  clearTimeout(player.timer);
  if (player.events) player.events.close();
  if (player.pc) player.pc.close();
  player.events = null;
  player.pc = null;
  player.session = null;
  $('viewers').textContent = '';
}

function retry(ms) {
  clearTimeout(player.timer);
  player.timer = setTimeout(join, ms);
}

function retryAfter(res) {
  const seconds = Number(res.headers.get('Retry-After'));
  const ms = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : player.backoff;
  player.backoff = Math.min(player.backoff * 2, 5000);
  return Math.min(ms, 5000);
}

function gathered(pc, limitMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, limitMs);
  });
}

async function join() {
  teardown();
  if (!player.ended && player.state !== 'waiting') show('connecting', 'Connecting…', '', { spinner: true });
  const pc = new RTCPeerConnection();
  player.pc = pc;
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
    if (pc.connectionState === 'failed') {
      show('reconnecting', 'Connection lost', 'Reconnecting…', { spinner: true });
      retry(1000);
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, 1000);
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
    player.session = res.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    subscribe(res.headers.get('Link'));
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
    return retry(retryAfter(res));
  }
  if (res.status === 404) return show('error', 'This viewer link is not valid', problem.detail || 'Ask the broadcaster for the current link.');
  if (res.status === 422) return show('error', 'This browser cannot play this broadcast', problem.detail || '');
  if (res.status === 503) {
    show('waiting', 'The broadcast is full right now', problem.detail || 'Retrying…', { spinner: true });
    return retry(retryAfter(res));
  }
  show('error', 'Something went wrong', problem.detail || `The server answered ${res.status}. Retrying…`);
  retry(retryAfter(res));
}

/// The WHEP server-sent-events extension: POST the wanted events to the Link URL, then follow
/// the stream it gives back.
async function subscribe(link) {
  const match = link && link.match(/<([^>]+)>\s*;[^,]*rel="urn:ietf:params:whep:ext:core:server-sent-events"/);
  if (!match) return;
  const wanted = ['active', 'inactive', 'viewercount', 'reconnecting', 'evicted', 'revoked'];
  const res = await fetch(match[1], { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(wanted) });
  if (res.status !== 201) return;
  const events = new EventSource(res.headers.get('Location') || match[1]);
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
  events.addEventListener('inactive', () => {
    player.ended = true;
    teardown();
    show('ended', 'The broadcast has ended', 'This page starts playing again by itself when it comes back.');
    retry(2000);
  });
  events.addEventListener('evicted', (e) => {
    const max = data(e).max_viewers;
    teardown();
    show('evicted', 'A newer viewer took your place', `This broadcast allows ${max} viewers at a time.`, { rejoin: true });
  });
  events.addEventListener('revoked', () => {
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
  if (player.session) fetch(player.session, { method: 'DELETE', keepalive: true });
});

join();
