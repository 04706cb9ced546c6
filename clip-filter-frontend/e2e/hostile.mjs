// A hostile page for the browser tests: served by a second tiny HTTP server on another loopback port (another
// origin), it tries to read from and write to the API the way any web site the user visits could.
import { createServer } from 'node:http'

/** The page's script: every attempt records whether it could read an answer. Results land in window.results. */
function pageScript(api, victim) {
  return `
const api = ${JSON.stringify(api)}, victim = ${JSON.stringify(victim)};
window.results = {};
async function attempt(name, run) {
  try { const res = await run(); window.results[name] = { read: true, status: res.status, body: await res.text() }; }
  catch (e) { window.results[name] = { read: false, error: String(e) }; }
}
window.done = (async () => {
  await attempt('get-collections', () => fetch(api + '/collections'));
  await attempt('get-info', () => fetch(api + '/api/info'));
  await attempt('delete-collection', () => fetch(api + '/collections/' + victim, { method: 'DELETE' }));
  // text/plain and multipart are CORS-safelisted: these go out without a preflight.
  await attempt('post-text-plain', () => fetch(api + '/collections', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: JSON.stringify({ name: 'pwned-plain' }) }));
  await attempt('post-no-cors', () => fetch(api + '/collections', { method: 'POST', mode: 'no-cors', body: JSON.stringify({ name: 'pwned-nocors' }) }));
  const form = new FormData();
  form.append('files', new Blob(['planted by another site'], { type: 'text/plain' }), 'planted.txt');
  await attempt('post-multipart', () => fetch(api + '/collections/' + victim + '/items', { method: 'POST', mode: 'no-cors', body: form }));
  await attempt('post-json', () => fetch(api + '/collections', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'pwned-json' }) }));
  // Classic form POSTs (each into its own hidden frame; the answers are not readable, and must change nothing).
  async function submitForm(name, enctype, action, fields) {
    const frame = document.createElement('iframe'); frame.name = name; document.body.append(frame);
    await new Promise((r) => setTimeout(r, 100)); // the frame's own about:blank load is over
    const sent = new Promise((resolve) => { frame.onload = resolve; setTimeout(resolve, 5000); });
    const f = document.createElement('form'); f.method = 'POST'; f.enctype = enctype; f.target = name; f.action = action;
    for (const [k, v] of fields) { const i = document.createElement('textarea'); i.name = k; i.value = v; f.append(i); }
    document.body.append(f); f.submit(); await sent;
  }
  await submitForm('sink1', 'multipart/form-data', api + '/collections/' + victim + '/items', [['texts', 'planted by a form']]);
  await submitForm('sink2', 'text/plain', api + '/collections', [['{"name":"pwned-form","x":"', '"}']]);
  // An <img> of a thumbnail: embedding our answers in another page is refused (Cross-Origin-Resource-Policy).
  window.results['img'] = await new Promise((resolve) => {
    const img = new Image(); img.onload = () => resolve({ read: true }); img.onerror = () => resolve({ read: false });
    img.src = api + '/collections/' + victim + '/items/1/thumbnail';
  });
  return window.results;
})();
`
}

/** Starts the hostile site; returns {url, stop()}. */
export function startHostileSite(api, victim) {
  const html = `<!doctype html><meta charset="utf-8"><title>a web page</title><body><script>${pageScript(api, victim)}</script>`
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
    res.end(html)
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      resolve({ url: `http://127.0.0.1:${port}/`, stop: () => new Promise((r) => server.close(r)) })
    })
  })
}
