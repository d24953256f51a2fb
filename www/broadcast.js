// The broadcaster page: issue a broadcast ID, show the OBS settings and a live status panel
// that polls GET /api/broadcast once a second. The broadcast ID goes in the Authorization
// header, never in a request path, so it stays out of access logs.

import { recordingCard } from '/assets/recordings.js';

const $ = (id) => document.getElementById(id);
const show = (id, on) => $(id).classList.toggle('hidden', !on);
let broadcastId = new URLSearchParams(location.search).get('id');

// The broadcast ID as the server wants it on the page's own API calls.
const auth = () => ({ Authorization: `Bearer ${broadcastId}` });
const renderRecording = recordingCard(auth);

async function createBroadcast(errorBox) {
  // A server started with --create-token wants it; the field is there for that.
  const token = $('create-token').value.trim();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch('/api/broadcasts', { method: 'POST', headers });
  if (res.status === 401) {
    show('invalid', false);
    show('panel', false);
    show('start', true);
    show('create-token-row', true);
    errorBox = $('create-error');
  }
  if (res.status !== 201) {
    const problem = await res.json().catch(() => ({}));
    if (errorBox) {
      errorBox.textContent = problem.detail || `The server answered ${res.status}.`;
      errorBox.classList.remove('hidden');
    }
    return;
  }
  const created = await res.json();
  broadcastId = created.broadcast_id;
  // Replace, not push: the ID stays only in this tab's own address.
  history.replaceState(null, '', `/broadcast?id=${encodeURIComponent(broadcastId)}`);
  showPanel();
}

function formatDuration(s) {
  if (s == null) return '–';
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

const STATE_TEXT = {
  idle: 'Waiting for OBS. Press Start Streaming in OBS with the settings below.',
  live: 'OBS is live. Viewers with the link see it now.',
  reconnecting: 'OBS dropped without stopping. Viewers are kept and see "reconnecting" until OBS comes back.',
};

function render(p) {
  $('state').textContent = p.state;
  $('state').className = `badge ${p.state}`;
  $('state-text').textContent = STATE_TEXT[p.state] || '';
  $('viewers').textContent = `${p.viewers} / ${p.max_viewers}`;
  $('bitrate').textContent = p.state === 'idle' ? '–' : `${p.bitrate_kbps} kb/s`;
  $('codec').textContent = [p.video_codec, p.h264_profile].filter(Boolean).join(' · ') || '–';
  $('resolution').textContent = p.resolution || '–';
  $('uptime').textContent = p.state === 'idle' ? '–' : formatDuration(p.live_for_s);
  $('loss').textContent = p.ingest_loss_percent == null ? '–' : `${p.ingest_loss_percent.toFixed(1)} %`;
  $('fps').textContent = p.fps == null ? '–' : `${p.fps}`;
  $('gop').textContent = p.keyframe_interval_s == null ? '–' : `${p.keyframe_interval_s} s`;
  $('agent').textContent = p.publisher_agent || '–';
  $('viewer-url').textContent = p.viewer_url;
  $('whip-server').textContent = p.whip_server;
  $('whip-url').textContent = p.whip_url;
  $('token').textContent = broadcastId;
  show('full', p.server_full);
  renderLayers(p.layers || []);
  renderRecording(p.recording);
  const warnings = $('warnings');
  warnings.replaceChildren(...p.warnings.map((w) => {
    const div = document.createElement('div');
    div.className = 'warn';
    div.textContent = w;
    return div;
  }));
}

// Simulcast: each layer OBS sends, the full-size one first; viewers each get the one
// their connection carries.
function renderLayers(layers) {
  const box = $('layers');
  show('layers', layers.length > 0);
  box.replaceChildren(...layers.map((l, i) => {
    const div = document.createElement('div');
    div.className = 'stat';
    const b = document.createElement('b');
    b.textContent = l.bitrate_kbps ? `${l.resolution || '?'} · ${l.bitrate_kbps} kb/s` : 'not arriving';
    const span = document.createElement('span');
    span.textContent = `layer ${i + 1} of ${layers.length} (rid ${l.rid})${l.fps ? ` · ${l.fps} fps` : ''}`;
    div.append(b, span);
    return div;
  }));
}

async function poll() {
  try {
    const res = await fetch('/api/broadcast', { cache: 'no-store', headers: auth() });
    if (res.status === 401 || res.status === 404) {
      show('panel', false);
      show('invalid', true);
      return;
    }
    if (res.ok) render(await res.json());
  } catch (_) {
    $('state-text').textContent = 'Cannot reach the server; retrying…';
  }
  setTimeout(poll, 1000);
}

function showPanel() {
  show('start', false);
  show('invalid', false);
  show('panel', true);
  $('token').textContent = broadcastId;
  poll();
}

document.addEventListener('click', async (e) => {
  const target = e.target.closest('[data-copy]');
  if (!target) return;
  const text = $(target.dataset.copy).textContent;
  try {
    await navigator.clipboard.writeText(text);
    target.textContent = 'Copied';
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($(target.dataset.copy));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    target.textContent = 'Selected';
  }
  setTimeout(() => { target.textContent = 'Copy'; }, 1500);
});

$('create').addEventListener('click', () => createBroadcast($('create-error')));
$('create-again').addEventListener('click', () => createBroadcast(null));
$('rotate').addEventListener('click', async () => {
  if (!confirm('Make a new viewer link? The current link stops working and current viewers are disconnected.')) return;
  const res = await fetch('/api/broadcast/view-id', { method: 'POST', headers: auth() });
  if (res.ok) $('viewer-url').textContent = (await res.json()).viewer_url;
});

// A WebRTC session with the server that carries no media: if ICE and DTLS complete, UDP works.
$('test-connection').addEventListener('click', async () => {
  const out = $('test-result');
  out.textContent = 'Testing…';
  const pc = new RTCPeerConnection();
  try {
    pc.addTransceiver('audio', { direction: 'recvonly' });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch('/api/connectivity-test', { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
    if (res.status !== 201) throw new Error((await res.json().catch(() => ({}))).detail || `the server answered ${res.status}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    const ok = await new Promise((resolve) => {
      const check = () => { if (pc.connectionState === 'connected') resolve(true); if (pc.connectionState === 'failed') resolve(false); };
      pc.addEventListener('connectionstatechange', check);
      setTimeout(() => resolve(pc.connectionState === 'connected'), 8000);
    });
    out.textContent = ok
      ? 'UDP works: media from this server reaches this browser.'
      : 'No UDP connection. Open the server\'s UDP media port (default 8189) in its firewall; behind NAT or Docker start it with --public-ip <public address>.';
    out.dataset.result = ok ? 'ok' : 'failed';
  } catch (e) {
    out.textContent = `The test could not run: ${e.message}`;
    out.dataset.result = 'error';
  } finally {
    pc.close();
  }
});

if (broadcastId) showPanel(); else show('start', true);
