// The SharedWorker behind events.js: one event stream per server (GET /stream/events) for
// every viewer tab of this browser. Each tab's WHEP session is attached to the stream by its
// session ID (POST /stream/events/<stream name>); the server tags every event with the
// session it is for, and the worker passes it to that session's tab. If the stream fails, every
// tab on it hears 'error' and starts over, as it would with its own EventSource.

const NAMES = ['active', 'inactive', 'viewercount', 'reconnect', 'reconnecting', 'evicted', 'revoked', 'layers'];
const servers = new Map(); // origin -> { source, channel, sessions: Map<session ID, port> }

onconnect = (e) => {
  const port = e.ports[0];
  port.onmessage = ({ data }) => {
    if (data.watch) watch(port, data.origin, data.session);
    else if (data.unwatch) unwatch(data.origin, data.session);
  };
  port.start();
};

function watch(port, origin, session) {
  const server = servers.get(origin) || open(origin);
  server.sessions.set(session, port);
  if (server.channel) attach(origin, server, session);
}

function unwatch(origin, session) {
  const server = servers.get(origin);
  if (server) server.sessions.delete(session);
}

function open(origin) {
  const server = { source: new EventSource(`${origin}/stream/events`), channel: null, sessions: new Map() };
  servers.set(origin, server);
  server.source.addEventListener('channel', (e) => {
    server.channel = JSON.parse(e.data).channel;
    for (const session of server.sessions.keys()) attach(origin, server, session);
  });
  for (const name of NAMES) {
    server.source.addEventListener(name, (e) => {
      const { session, data } = JSON.parse(e.data);
      const port = server.sessions.get(session);
      if (port) port.postMessage({ origin, session, name, data: JSON.stringify(data) });
    });
  }
  server.source.onerror = () => fail(origin, server);
  return server;
}

// From now on the server sends this session's events on the shared stream, its state first.
async function attach(origin, server, session) {
  const res = await fetch(`${origin}/stream/events/${server.channel}`, { method: 'POST', body: session })
    .catch(() => null);
  if (res && res.status === 204) return;
  const port = server.sessions.get(session);
  if (port) port.postMessage({ origin, session, name: 'error' });
}

// The stream ended (server restart, network): no event reaches these tabs any more.
function fail(origin, server) {
  server.source.close();
  if (servers.get(origin) === server) servers.delete(origin);
  for (const [session, port] of server.sessions) port.postMessage({ origin, session, name: 'error' });
}
