// immich's server side of its machine-learning API, as server/src/repositories/machine-learning.repository.ts
// builds it (immich-app/immich): `entries` is JSON.stringify(config), the image a Blob of the file's bytes,
// the text a plain field; POST /predict with fetch(), response.json() when ok. GET /ping for health.
// Usage: node immich_client.mjs '<json: {url, entries | rawEntries, imagePath?, text?, assetId?, ping?}>'
import { readFile } from 'node:fs/promises';

const args = JSON.parse(process.argv[2]);

async function getFormData(payload, config) {
  const formData = new FormData();
  formData.append('entries', typeof config === 'string' ? config : JSON.stringify(config));
  if ('imagePath' in payload) {
    if (payload.assetId) {
      formData.append('assetId', payload.assetId);
    } else {
      const fileBuffer = await readFile(payload.imagePath);
      formData.append('image', new Blob([new Uint8Array(fileBuffer)]));
    }
  } else if ('text' in payload) {
    formData.append('text', payload.text);
  }
  return formData;
}

async function main() {
  if (args.ping) {
    const response = await fetch(new URL('/ping', args.url), { signal: AbortSignal.timeout(2000) });
    return { ok: response.ok, status: response.status, type: response.headers.get('content-type'), body: await response.text() };
  }
  const payload = {};
  if ('imagePath' in args) payload.imagePath = args.imagePath;
  if ('assetId' in args) payload.assetId = args.assetId;
  if ('text' in args) payload.text = args.text;
  const formData = await getFormData(payload, args.rawEntries ?? args.entries);
  const response = await fetch(new URL('/predict', args.url), { method: 'POST', body: formData });
  if (response.ok) {
    return { ok: true, status: response.status, body: await response.json() };
  }
  return { ok: false, status: response.status, statusText: response.statusText, body: await response.text() };
}

console.log(JSON.stringify(await main()));
