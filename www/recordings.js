// The broadcaster page's Recording card: the Record switch, what the recorder is doing (and
// why it stopped), and the list of recordings with download and delete. Every call carries
// the broadcast ID as a Bearer token; the download links are signed by the server for one
// file each, so a plain link or a <video> can follow them.

const $ = (id) => document.getElementById(id);

const RECORD_TEXT = {
  off: 'Switched off: nothing is recorded.',
  waiting: 'Recording starts when OBS sends video.',
  recording: 'Recording now.',
  stopped: 'Recording stopped; the broadcast goes on.',
};

function formatBytes(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${Math.round(n / 1e3)} kB`;
}

function formatSeconds(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}

export function recordingCard(auth) {
  let lastList = 0;
  let lastState = null;

  function renderStatus(r) {
    $('record-card').classList.toggle('hidden', !r);
    if (!r) return;
    $('record-state').textContent = r.state;
    $('record-state').className = `badge ${r.state}`;
    $('record-switch').checked = r.on;
    $('record-text').textContent = RECORD_TEXT[r.state] || '';
    $('record-reason').textContent = r.reason ? `Recording stopped: ${r.reason}.` : '';
    $('record-reason').classList.toggle('hidden', !r.reason);
  }

  function renderFiles(files) {
    $('recordings-empty').classList.toggle('hidden', files.length > 0);
    $('recordings').replaceChildren(...files.map((f) => {
      const tr = document.createElement('tr');
      tr.dataset.name = f.name;
      const cell = (text) => { const td = document.createElement('td'); td.textContent = text; tr.append(td); return td; };
      cell(f.start_unix ? new Date(f.start_unix * 1000).toLocaleString() : f.name);
      cell(formatSeconds(f.duration_s) + (f.writing ? ' (recording)' : ''));
      cell(formatBytes(f.bytes));
      const actions = cell('');
      const a = document.createElement('a');
      a.href = f.url;
      a.download = f.name;
      a.textContent = 'Download';
      a.className = 'download';
      actions.append(a, ' ');
      if (!f.writing) {
        const del = document.createElement('button');
        del.className = 'secondary delete';
        del.textContent = 'Delete';
        del.addEventListener('click', () => remove(f.name));
        actions.append(del);
      }
      return tr;
    }));
  }

  async function list() {
    lastList = Date.now();
    const res = await fetch('/api/broadcast/recordings', { cache: 'no-store', headers: auth() });
    if (!res.ok) return;
    const body = await res.json();
    renderStatus(body.recording);
    renderFiles(body.files);
  }

  async function remove(name) {
    if (!confirm(`Delete ${name}? This cannot be undone.`)) return;
    const res = await fetch(`/api/broadcast/recordings/${encodeURIComponent(name)}`, { method: 'DELETE', headers: auth() });
    if (!res.ok) alert((await res.json().catch(() => ({}))).detail || `The server answered ${res.status}.`);
    list();
  }

  $('record-switch').addEventListener('change', async (e) => {
    const res = await fetch('/api/broadcast/record', {
      method: 'POST',
      headers: { ...auth(), 'Content-Type': 'application/json' },
      body: JSON.stringify({ on: e.target.checked }),
    });
    if (res.ok) renderStatus(await res.json());
    list();
  });

  // Called with each panel poll: the status every second, the file list every few seconds
  // and whenever the status changes (a file started, or stopped being written).
  return (recording) => {
    renderStatus(recording);
    const changed = recording && recording.state !== lastState;
    lastState = recording && recording.state;
    if (recording && (changed || Date.now() - lastList > 4000)) list().catch(() => {});
  };
}
