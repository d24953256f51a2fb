// A viewer page's server events without one held connection per tab. Browsers give a server
// six HTTP/1.1 connections, and an EventSource holds one for as long as the page is open: the
// seventh tab of a server would never load. So a SharedWorker (events-worker.js) holds one
// event stream per server for every tab of this browser and relays each tab the events of its
// own session. Without SharedWorker (or if it fails to start) the page opens the session's own
// stream (the WHEP SSE extension), as any WHEP client does. Over HTTP/2 either way costs one
// stream, not a connection.

let port = null; // the worker's port; false once the worker is known not to work
const watchers = new Map(); // `${origin} ${session}` -> SharedEvents

// Stands in for an EventSource: addEventListener(name, fn) gets { data }, onerror, close().
class SharedEvents extends EventTarget {
  constructor(streamUrl, origin, session) {
    super();
    this.streamUrl = streamUrl;
    this.origin = origin;
    this.session = session;
    this.names = new Set();
    this.fallback = null;
    this.onerror = null;
  }

  addEventListener(name, fn) {
    this.names.add(name);
    super.addEventListener(name, fn);
  }

  fire(name, data) {
    if (name === 'error') {
      if (this.onerror) this.onerror(new Event('error'));
      return;
    }
    this.dispatchEvent(new MessageEvent(name, { data }));
  }

  // The worker did not start: this page follows its session's own stream after all.
  useOwnStream() {
    if (this.fallback) return;
    const own = new EventSource(this.streamUrl);
    for (const name of this.names) own.addEventListener(name, (e) => this.fire(name, e.data));
    own.onerror = () => this.fire('error');
    this.fallback = own;
  }

  close() {
    watchers.delete(`${this.origin} ${this.session}`);
    if (this.fallback) this.fallback.close();
    else if (port) port.postMessage({ unwatch: true, origin: this.origin, session: this.session });
  }
}

function workerPort() {
  if (port !== null) return port;
  try {
    const worker = new SharedWorker('/assets/events-worker.js', { name: 'whipcast-events' });
    worker.onerror = () => {
      port = false;
      for (const w of watchers.values()) w.useOwnStream();
    };
    port = worker.port;
    port.onmessage = ({ data }) => {
      const w = watchers.get(`${data.origin} ${data.session}`);
      if (w && !w.fallback) w.fire(data.name, data.data);
    };
    port.start();
  } catch (_) {
    port = false;
  }
  return port;
}

// The events of the WHEP session at `sessionUrl`, whose own stream is at `streamUrl`.
export function openEvents(streamUrl, sessionUrl) {
  const p = sessionUrl && workerPort();
  if (!p) return new EventSource(streamUrl);
  const url = new URL(sessionUrl, location.href);
  const session = url.pathname.split('/').pop();
  const events = new SharedEvents(streamUrl, url.origin, session);
  watchers.set(`${url.origin} ${session}`, events);
  // After the caller's addEventListener calls, which run in this same task.
  queueMicrotask(() => p.postMessage({ watch: true, origin: url.origin, session }));
  return events;
}
