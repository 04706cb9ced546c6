// End-to-end: the built UI in headless Chromium (playwright-core, the system's browser) against a live
// backend with the tiny random model, started by this file. Run: npm run e2e (node's test runner).
import assert from 'node:assert/strict'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'
import { chromium } from 'playwright-core'
import { ARTIFACTS, startBackend } from './backend.mjs'
import { startHostileSite } from './hostile.mjs'
import { testImage } from './png.mjs'

const SCREENSHOTS = join(ARTIFACTS, 'screenshots')
// The system's Chromium, never a downloaded one (playwright-core has no browser of its own).
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
const TIMEOUT = 300_000

/** Files for the page: {name, type, base64}. */
const png = (name, seed, size = 64) => ({ name, type: 'image/png', base64: testImage(seed, size).toString('base64') })
const txt = (name, text) => ({ name, type: 'text/plain', base64: Buffer.from(text).toString('base64') })

/** Dispatches dragenter, dragover and drop on `selector` with a DataTransfer of File objects made in the page. */
async function dropFiles(page, selector, files) {
  const target = page.locator(selector)
  await target.waitFor({ state: 'visible' })
  const dataTransfer = await page.evaluateHandle((specs) => {
    const dt = new DataTransfer()
    for (const { name, type, base64 } of specs) {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))
      dt.items.add(new File([bytes], name, { type }))
    }
    return dt
  }, files)
  for (const type of ['dragenter', 'dragover', 'drop']) {
    await target.dispatchEvent(type, { dataTransfer })
  }
  await dataTransfer.dispose()
}

describe('clip-filter UI end-to-end', { timeout: 15 * 60_000 }, () => {
  let backend
  let browser
  const collection = `e2e-${Date.now().toString(36)}`
  let ingested = false

  // Set up once, on first use: a failed set-up (no Chromium, no backend) then fails every test; nothing is
  // ever skipped.
  let ready = null
  function setUp() {
    ready ??= (async () => {
      if (!existsSync(executablePath)) {
        throw new Error(`no Chromium at ${executablePath}: install it (apt-get install chromium) or set CHROMIUM_PATH`)
      }
      mkdirSync(SCREENSHOTS, { recursive: true })
      backend = await startBackend()
      browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true })
    })()
    return ready
  }

  after(async () => {
    await browser?.close()
    await backend?.stop()
  })

  /** A fresh page; uncaught page errors fail the test that opened it. */
  async function openPage(t, hash) {
    await setUp()
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
    const page = await context.newPage()
    page.setDefaultTimeout(30_000)
    const errors = []
    page.on('pageerror', (e) => errors.push(e.message))
    t.after(async () => {
      await context.close()
    })
    await page.goto(`${backend.baseUrl}/#${hash}`)
    return { page, errors }
  }

  async function shot(page, name) {
    await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true })
  }

  /** Tests 3 and 4 need a filled collection; when test 2 did not make it, fill it through the API. */
  async function ensureCollection() {
    await setUp()
    if (ingested) return
    const base = backend.baseUrl
    let res = await fetch(`${base}/api/collections`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: collection }),
    })
    assert.ok(res.status === 201 || res.status === 409, `create collection: ${res.status} ${await res.text()}`)
    const form = new FormData()
    for (let i = 0; i < 4; i++) form.append('files', new Blob([testImage(i, 64)], { type: 'image/png' }), `shape-${i}.png`)
    form.append('files', new Blob(['a red square on a white background'], { type: 'text/plain' }), 'caption.txt')
    res = await fetch(`${base}/api/collections/${collection}/items`, { method: 'POST', body: form })
    assert.equal(res.status < 300, true, `add items: ${res.status} ${await res.text()}`)
    ingested = true
  }

  test('match: two dropped images, three captions -> three bars per image and the random-weights banner', { timeout: TIMEOUT }, async (t) => {
    const { page, errors } = await openPage(t, 'match')
    const banner = page.getByTestId('banner-random')
    await banner.waitFor()
    assert.match(await banner.innerText(), /random weights/i)
    assert.equal(await banner.getAttribute('role'), 'alert')

    await dropFiles(page, '[data-testid=match-dropzone]', [png('red-square.png', 0, 96), png('green-circle.png', 1, 96)])
    await page.getByTestId('picked-image').nth(1).waitFor()
    assert.equal(await page.getByTestId('picked-image').count(), 2)

    await page.getByRole('button', { name: /add caption/i }).click()
    await page.getByLabel('Caption 1', { exact: true }).fill('a red square')
    await page.getByLabel('Caption 2', { exact: true }).fill('a green circle')
    await page.getByLabel('Caption 3', { exact: true }).fill('a blue triangle')
    await page.getByRole('button', { name: 'Match 2 images' }).click()

    const results = page.getByTestId('match-result')
    await results.nth(1).waitFor()
    assert.equal(await results.count(), 2)
    for (let i = 0; i < 2; i++) {
      const card = results.nth(i)
      assert.equal(await card.getByTestId('caption-bar').count(), 3, `image ${i}: one bar per caption`)
      assert.equal(await card.locator('[data-testid=caption-bar][data-best=true]').count(), 1, `image ${i}: one best caption`)
      const best = await card.getByTestId('best-caption').innerText()
      assert.ok(['a red square', 'a green circle', 'a blue triangle'].includes(best), `best caption ${best}`)
      const probabilities = await card.getByTestId('probability').allInnerTexts()
      assert.equal(probabilities.length, 3)
      const sum = probabilities.map((p) => (p.startsWith('<') ? 0 : parseFloat(p))).reduce((a, b) => a + b, 0)
      assert.ok(Math.abs(sum - 100) < 1, `probabilities add up to 100%: ${probabilities}`)
      assert.equal((await card.getByTestId('cosine').allInnerTexts()).length, 3)
    }
    assert.match(await page.getByTestId('response-weights').innerText(), /random weights/i)
    await shot(page, 'match')
    assert.deepEqual(errors, [])
  })

  test('match: keyboard file picker and paste; a broken image shows its error inline', { timeout: TIMEOUT }, async (t) => {
    const { page, errors } = await openPage(t, 'match')
    // the drop zone is a focusable button: Enter opens the real <input type=file>
    // (listen first: Playwright turns on file-chooser interception asynchronously, and a chooser opened before
    // that is a native one, never reported)
    const chooserOpened = page.waitForEvent('filechooser')
    const zone = page.getByRole('button', { name: /add images/i })
    await zone.focus()
    assert.equal(await zone.evaluate((el) => el === document.activeElement), true, 'the drop zone takes the focus')
    await page.keyboard.press('Enter')
    const chooser = await chooserOpened
    assert.equal(chooser.isMultiple(), true)
    await chooser.setFiles({ name: 'ok.png', mimeType: 'image/png', buffer: testImage(2, 64) })
    await page.getByTestId('picked-image').first().waitFor()
    // a pasted "image" that is not one
    await page.evaluate((bytes) => {
      const dt = new DataTransfer()
      dt.items.add(new File([new TextEncoder().encode(bytes)], 'broken.png', { type: 'image/png' }))
      document.body.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }))
    }, 'this is not a png')
    await page.getByTestId('picked-image').nth(1).waitFor()
    await page.getByLabel('Caption 1', { exact: true }).fill('a triangle')
    await page.getByLabel('Caption 2', { exact: true }).fill('a circle')
    await page.getByRole('button', { name: 'Match 2 images' }).click()
    const results = page.getByTestId('match-result')
    await results.nth(1).waitFor()
    assert.equal(await results.nth(0).getByTestId('caption-bar').count(), 2)
    const message = await results.nth(1).getByTestId('match-error').innerText()
    assert.ok(message.length > 0, 'the error message is shown')
    assert.equal(await results.nth(1).getByTestId('caption-bar').count(), 0)
    await shot(page, 'match-error')
    assert.deepEqual(errors, [])
  })

  test('collections: ingesting five dropped files shows the progress bar, then the five items', { timeout: TIMEOUT }, async (t) => {
    const { page, errors } = await openPage(t, 'collections')
    await page.getByLabel('New collection name').fill(collection)
    await page.getByRole('button', { name: 'Create collection' }).click()
    const select = page.getByRole('combobox', { name: 'Collection' })
    await page.waitForFunction(
      (name) => document.querySelector('#collections-collection')?.value === name,
      collection,
    )
    assert.equal(await select.inputValue(), collection)

    const files = [0, 1, 2, 3].map((i) => png(`shape-${i}.png`, i))
    files.push(txt('caption.txt', 'a red square on a white background'))
    await dropFiles(page, '[data-testid=ingest-dropzone]', files)

    const progress = page.getByTestId('job-progress')
    await progress.waitFor()
    assert.ok(await page.getByRole('progressbar', { name: 'Ingest progress' }).isVisible())
    await page.waitForSelector('[data-testid=job-progress][data-state=done]', { timeout: 120_000 })
    assert.equal(await page.getByTestId('job-count').innerText(), '5/5')

    await page.waitForFunction(() => document.querySelectorAll('[data-testid=item-card]').length === 5, null, { timeout: 30_000 })
    assert.equal(await page.locator('[data-testid=item-card].kind-image').count(), 4)
    assert.equal(await page.locator('[data-testid=item-card].kind-text').count(), 1)
    // thumbnails load from the API under /api
    await page.waitForFunction(() =>
      [...document.querySelectorAll('[data-testid=item-card] img')].every((img) => img.complete && img.naturalWidth > 0),
    )
    ingested = true
    await shot(page, 'collections')
    assert.deepEqual(errors, [])
  })

  test('search: a text search returns scored results; more like this and image search too', { timeout: TIMEOUT }, async (t) => {
    await ensureCollection()
    const { page, errors } = await openPage(t, 'collections')
    await page.getByRole('combobox', { name: 'Collection' }).selectOption(collection)
    await page.getByTestId('item-card').first().waitFor()

    await page.getByLabel('Search text').fill('a red square')
    await page.getByRole('button', { name: 'Search', exact: true }).click()
    const results = page.getByTestId('search-result')
    await results.first().waitFor()
    const n = await results.count()
    assert.ok(n >= 1 && n <= 5, `results: ${n}`)
    const scores = (await page.locator('[data-testid=search-result] [data-testid=score]').allInnerTexts()).map(Number)
    assert.ok(scores.every((s) => Number.isFinite(s) && s >= -1 && s <= 1), `scores ${scores}`)
    assert.deepEqual([...scores].sort((a, b) => b - a), scores, 'results are ordered by score')
    await shot(page, 'search')

    // kind filter: only texts
    await page.getByLabel('Kind').selectOption('text')
    await page.getByRole('button', { name: 'Search', exact: true }).click()
    await page.waitForFunction(() => {
      const cards = [...document.querySelectorAll('[data-testid=search-result]')]
      return cards.length > 0 && cards.every((c) => c.classList.contains('kind-text'))
    })
    await page.getByLabel('Kind').selectOption('')

    // more like this on the first image result
    await page.getByTestId('item-card').first().getByRole('button', { name: /more like/i }).click()
    await page.getByTestId('search-summary').filter({ hasText: /more like/ }).waitFor()
    await results.first().waitFor()

    // search by a dropped image
    await dropFiles(page, '[data-testid=search-image-dropzone]', [png('query.png', 0)])
    await page.getByTestId('search-summary').filter({ hasText: /image query\.png/ }).waitFor()
    await results.first().waitFor()
    assert.ok((await results.count()) >= 1)
    await shot(page, 'search-image')
    assert.deepEqual(errors, [])
  })

  test('map: the points are drawn, and a projected text query is marked', { timeout: TIMEOUT }, async (t) => {
    await ensureCollection()
    const { page, errors } = await openPage(t, 'map')
    await page.getByRole('combobox', { name: 'Collection' }).selectOption(collection)
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=map-point]').length >= 5, null, {
      timeout: 60_000,
    })
    assert.ok((await page.getByTestId('map-point').count()) >= 5)
    assert.match(await page.getByTestId('map-summary').innerText(), /layout: \w+/)

    // hovering an image point shows its thumbnail
    await page.locator('[data-testid=map-point].kind-image').first().hover()
    const tip = page.getByTestId('map-tooltip')
    await tip.waitFor()
    await page.waitForFunction(() => {
      const img = document.querySelector('[data-testid=map-tooltip] img')
      return img && img.complete && img.naturalWidth > 0
    })
    await shot(page, 'map-hover')

    await page.getByLabel('Project text onto the map').fill('a red square')
    await page.getByRole('button', { name: 'Project' }).click()
    const marker = page.getByTestId('map-query-point')
    await marker.waitFor()
    assert.equal(await marker.getAttribute('aria-label'), 'Query: a red square')
    const box = await marker.boundingBox()
    const svg = await page.locator('.map-svg').boundingBox()
    assert.ok(box && svg && box.x >= svg.x - 1 && box.x + box.width <= svg.x + svg.width + 1, 'the query marker is inside the map')
    await page.mouse.move(0, 0)
    await shot(page, 'map')
    assert.deepEqual(errors, [])
  })
  test('a hostile page on another origin can neither read nor change anything', { timeout: TIMEOUT }, async (t) => {
    await ensureCollection()
    const base = backend.baseUrl
    const before = await (await fetch(`${base}/api/collections/${collection}`)).json()
    const site = await startHostileSite(base, collection)
    t.after(() => site.stop())
    const context = await browser.newContext()
    t.after(() => context.close())
    const page = await context.newPage()
    await page.goto(site.url)
    const results = await page.evaluate(() => window.done)
    for (const name of ['get-collections', 'get-info', 'delete-collection', 'post-text-plain', 'post-json']) {
      assert.equal(results[name].read, false, `${name}: the page read ${JSON.stringify(results[name])}`)
    }
    for (const name of ['post-no-cors', 'post-multipart']) {
      // no-cors: the page gets an opaque answer (status 0, no body) whatever the server said
      assert.ok(!results[name].read || (results[name].status === 0 && results[name].body === ''), name)
    }
    assert.equal(results.img.read, false, 'the thumbnail was embedded in another site')
    // Nothing changed: the collection is there with the same items, and no collection was created.
    const after = await (await fetch(`${base}/api/collections/${collection}`)).json()
    assert.equal(after.item_count, before.item_count)
    const names = (await (await fetch(`${base}/api/collections`)).json()).collections.map((c) => c.name)
    assert.ok(names.includes(collection))
    assert.deepEqual(names.filter((n) => n.startsWith('pwned')), [])
  })
})

describe('clip-filter UI end-to-end with API keys required', { timeout: 10 * 60_000 }, () => {
  const key = `cfk_${Array.from({ length: 43 }, (_, i) => 'abcdefghijklmnopqrstuvwxyz0123456789'[(i * 7) % 36]).join('')}`
  let backend
  let browser
  let ready = null
  function setUp() {
    ready ??= (async () => {
      backend = await startBackend({ env: { CLIP_FILTER_AUTH: 'keys', CLIP_FILTER_BOOTSTRAP_KEY: key }, name: 'e2e-backend-keys' })
      browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true })
    })()
    return ready
  }
  after(async () => {
    await browser?.close()
    await backend?.stop()
  })

  test('the UI asks for a key, then works with it; forgetting it asks again', { timeout: TIMEOUT }, async (t) => {
    await setUp()
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
    t.after(() => context.close())
    const page = await context.newPage()
    page.setDefaultTimeout(30_000)
    const errors = []
    page.on('pageerror', (e) => errors.push(e.message))
    await page.goto(`${backend.baseUrl}/#collections`)
    const dialog = page.getByTestId('key-dialog')
    await dialog.waitFor()
    await page.getByTestId('key-input').fill('cfk_wrong')
    await page.getByTestId('key-submit').click()
    await page.getByRole('alert').filter({ hasText: /refused/ }).waitFor() // the wrong key is refused
    await page.getByTestId('key-input').fill(key)
    await page.getByTestId('key-submit').click()
    await dialog.waitFor({ state: 'detached' })
    await page.getByTestId('model-summary').filter({ hasText: 'clip-filter-tiny' }).waitFor()
    assert.equal(await page.evaluate(() => window.localStorage.getItem('clip-filter.api-key')), key)

    const name = `keys-${Date.now().toString(36)}`
    await page.getByLabel('New collection name').fill(name)
    await page.getByRole('button', { name: 'Create collection' }).click()
    await page.waitForFunction((n) => document.querySelector('#collections-collection')?.value === n, name)
    await dropFiles(page, '[data-testid=ingest-dropzone]', [png('a.png', 0), png('b.png', 1)])
    await page.waitForSelector('[data-testid=job-progress][data-state=done]', { timeout: 120_000 })
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=item-card]').length === 2, null, { timeout: 30_000 })
    // thumbnails come with the key (fetched, shown from object URLs)
    await page.waitForFunction(() => {
      const imgs = [...document.querySelectorAll('[data-testid=item-card] img')]
      return imgs.length === 2 && imgs.every((img) => img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0)
    })
    await page.getByLabel('Search text').fill('a red square')
    await page.getByRole('button', { name: 'Search', exact: true }).click()
    await page.getByTestId('search-result').first().waitFor()
    await page.screenshot({ path: join(SCREENSHOTS, 'keys.png'), fullPage: true })

    // The same API without the key: 401.
    const res = await fetch(`${backend.baseUrl}/api/collections/${name}`)
    assert.equal(res.status, 401)

    await page.getByTestId('forget-key').click()
    await dialog.waitFor()
    assert.equal(await page.evaluate(() => window.localStorage.getItem('clip-filter.api-key')), null)
    assert.deepEqual(errors, [])
  })
})
