// The status page: slots in use and every live broadcast, from GET /api/status every 2 s.
// The API carries opaque labels only, never a broadcast ID or a view ID.

const rows = document.getElementById('rows');
const slots = document.getElementById('slots');

function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    td.append(span);
  } else {
    td.textContent = text;
  }
  return td;
}

function uptime(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

async function refresh() {
  try {
    const res = await fetch('/api/status', { cache: 'no-store' });
    const s = await res.json();
    slots.textContent = `${s.slots_used} of ${s.slots_total} live-broadcast slots in use`;
    if (s.broadcasts.length === 0) {
      const tr = document.createElement('tr');
      const td = cell('Nothing is live right now.');
      td.colSpan = 5;
      td.className = 'empty';
      tr.append(td);
      rows.replaceChildren(tr);
    } else {
      rows.replaceChildren(...s.broadcasts.map((b) => {
        const tr = document.createElement('tr');
        const bitrate = cell(`${b.bitrate_kbps} kb/s`);
        bitrate.className = 'hide-sm';
        tr.append(cell(b.label), cell(b.state, `badge ${b.state}`), cell(`${b.viewers} / ${b.max_viewers}`), bitrate, cell(uptime(b.uptime_s)));
        return tr;
      }));
    }
  } catch (_) {
    slots.textContent = 'Cannot reach the server; retrying…';
  }
  setTimeout(refresh, 2000);
}

refresh();
