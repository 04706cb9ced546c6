import { afterEach, describe, expect, it, vi } from 'vitest'
import { ApiError, apiUrl, errorMessage, search, startJob } from '../lib/api'
import { parseFilters } from '../lib/filters'
import { stubFetch } from './helpers'

afterEach(() => vi.unstubAllGlobals())

describe('apiUrl', () => {
  it('prefixes API paths and item urls with the base', () => {
    expect(apiUrl('/info')).toBe('/api/info')
    expect(apiUrl('/collections/c/items/3/thumbnail')).toBe('/api/collections/c/items/3/thumbnail')
    expect(apiUrl('collections')).toBe('/api/collections')
    expect(apiUrl('blob:xyz')).toBe('blob:xyz')
  })
})

describe('errors', () => {
  it('turns the {"error": {...}} shape into an ApiError with its message', async () => {
    stubFetch({
      'POST /collections': () => ({ status: 409, body: { error: { code: 'collection_exists', message: 'Collection "c" already exists.' } } }),
    })
    const { createCollection } = await import('../lib/api')
    const err = await createCollection('c').catch((e) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(409)
    expect(err.code).toBe('collection_exists')
    expect(errorMessage(err)).toBe('Collection "c" already exists.')
  })
})

describe('search requests', () => {
  it('sends text searches as JSON with paging, kind and filters', async () => {
    const { calls } = stubFetch({ 'POST /collections/c/search': () => ({ body: { results: [] } }) })
    await search('c', { type: 'text', text: 'a cat' }, { topK: 20, offset: 40, kind: 'image', filters: { camera: 'x' } })
    expect(JSON.parse(String(calls[0].init?.body))).toEqual({
      text: 'a cat',
      top_k: 20,
      offset: 40,
      kind: 'image',
      filters: { camera: 'x' },
    })
  })

  it('sends "more like this" as item_id', async () => {
    const { calls } = stubFetch({ 'POST /collections/c/search': () => ({ body: { results: [] } }) })
    await search('c', { type: 'item', itemId: 7 }, { topK: 20, offset: 0 })
    expect(JSON.parse(String(calls[0].init?.body))).toEqual({ item_id: 7, top_k: 20, offset: 0 })
  })

  it('sends image searches as multipart with an image file', async () => {
    const { calls } = stubFetch({ 'POST /collections/c/search': () => ({ body: { results: [] } }) })
    const image = new File([new Uint8Array([1, 2])], 'q.png', { type: 'image/png' })
    await search('c', { type: 'image', image }, { topK: 10, offset: 0, kind: 'text' })
    const form = calls[0].init?.body as FormData
    expect((form.get('image') as File).name).toBe('q.png')
    expect(form.get('top_k')).toBe('10')
    expect(form.get('kind')).toBe('text')
  })

  it('reads the job id from job_id', async () => {
    stubFetch({ 'POST /collections/c/jobs': () => ({ status: 202, body: { job_id: 'abc', state: 'queued', done: 0, total: 2 } }) })
    const job = await startJob('c', [new File(['x'], 'a.txt', { type: 'text/plain' })])
    expect(job.id).toBe('abc')
  })
})

describe('parseFilters', () => {
  it('parses key=value pairs', () => {
    expect(parseFilters('camera = fuji, year=2020\nplace=a=b')).toEqual({
      filters: { camera: 'fuji', year: '2020', place: 'a=b' },
      errors: [],
    })
    expect(parseFilters('').filters).toEqual({})
    expect(parseFilters('oops').errors).toHaveLength(1)
  })
})
