// A loopback webhook receiver for the dashboard tests.
//
//   POST /ok/...        200 "ok"
//   POST /fail/...      500 "receiver says no"
//   POST /xss/...       200 with an HTML body that must show up as literal text
//   POST /toggle/NAME   500 until told otherwise, then whatever status it was set to
//
// Control (used by the tests, not by Herald):
//   GET    /_received           every delivery received, oldest first, as JSON
//   POST   /_toggle/NAME?status=200
//
// Prints `listening <port>` once it is up. Binds 127.0.0.1 only.
import http from 'node:http';

export const XSS_BODY = '<script>alert(1)</script><img src=x onerror=alert(2)>';

const received = [];
const toggles = new Map();

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const body = await readBody(req);
  const send = (status, text, type = 'text/plain; charset=utf-8') => {
    res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  };

  if (url.pathname === '/_received') {
    send(200, JSON.stringify(received), 'application/json');
    return;
  }
  if (url.pathname.startsWith('/_toggle/')) {
    const name = url.pathname.slice('/_toggle/'.length);
    toggles.set(name, Number(url.searchParams.get('status') || 200));
    send(200, 'set');
    return;
  }

  received.push({
    method: req.method,
    path: url.pathname,
    headers: req.headers,
    body,
    at: new Date().toISOString(),
  });

  if (url.pathname.startsWith('/ok')) send(200, 'ok');
  else if (url.pathname.startsWith('/fail')) send(500, 'receiver says no');
  else if (url.pathname.startsWith('/xss')) send(200, XSS_BODY, 'text/html; charset=utf-8');
  else if (url.pathname.startsWith('/toggle/')) {
    const status = toggles.get(url.pathname.slice('/toggle/'.length)) ?? 500;
    send(status, status < 300 ? 'ok now' : 'toggle is off');
  } else send(404, 'no such receiver path');
});

server.listen(Number(process.env.RECEIVER_PORT || 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
