import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { CollectionsPage } from '../components/CollectionsPage'
import type { Collection } from '../lib/types'
import { pngFile, stubFetch } from './helpers'

afterEach(() => {
  cleanup()
  vi.unstubAllGlobals()
})

const collection: Collection = { name: 'photos', description: '', item_count: 0, image_count: 0, text_count: 0 }

function item(id: number, kind: 'image' | 'text' = 'image') {
  return {
    id,
    kind,
    filename: kind === 'image' ? `img${id}.png` : `note${id}.txt`,
    text: kind === 'text' ? 'a note about cats' : undefined,
    metadata: {},
    content_url: `/collections/photos/items/${id}/content`,
    thumbnail_url: kind === 'image' ? `/collections/photos/items/${id}/thumbnail` : null,
  }
}

describe('CollectionsPage', () => {
  it('ingests dropped files as a job, shows progress, then the items', async () => {
    let polls = 0
    let stored: ReturnType<typeof item>[] = []
    const { calls } = stubFetch({
      'GET /collections/photos/items': () => ({ body: { items: stored, total: stored.length, offset: 0, limit: 24 } }),
      'POST /collections/photos/jobs': () => ({
        status: 202,
        body: { job_id: 'j1', id: 'j1', collection: 'photos', state: 'queued', done: 0, total: 3, added: 0, duplicates: 0, failed: 0, failures: [] },
      }),
      'GET /jobs/j1': () => {
        polls += 1
        if (polls === 1) {
          return { body: { id: 'j1', state: 'running', done: 1, total: 3, added: 1, duplicates: 0, failed: 0, failures: [] } }
        }
        stored = [item(1), item(2, 'text')]
        return {
          body: {
            id: 'j1', state: 'done', done: 3, total: 3, added: 2, duplicates: 0, failed: 1,
            failures: [{ filename: 'bad.png', code: 'corrupt_image', message: 'corrupt' }],
          },
        }
      },
    })
    const refresh = vi.fn(async () => {})
    render(
      <CollectionsPage active collections={[collection]} selected="photos" onSelect={() => {}} refreshCollections={refresh} />,
    )
    const zone = screen.getByRole('button', { name: /add files to the collection/i })
    fireEvent.drop(zone, {
      dataTransfer: { files: [pngFile('a.png'), pngFile('bad.png'), new File(['a note'], 'n.txt', { type: 'text/plain' })], items: [] },
    })
    await waitFor(() => expect(screen.getByTestId('job-progress')).toBeTruthy())
    const jobPost = calls.find((c) => c.method === 'POST')!
    expect((jobPost.init?.body as FormData).getAll('files').map((f) => (f as File).name)).toEqual(['a.png', 'bad.png', 'n.txt'])

    await waitFor(() => expect(screen.getByTestId('job-count').textContent).toBe('1/3'))
    await waitFor(() => expect(screen.getByTestId('job-progress').getAttribute('data-state')).toBe('done'), { timeout: 3000 })
    await waitFor(() => expect(screen.getAllByTestId('item-card')).toHaveLength(2))
    expect(screen.getByTestId('job-failures').textContent).toContain('bad.png')
    expect(refresh).toHaveBeenCalled()
    const img = within(screen.getAllByTestId('item-card')[0]).getByRole('img') as HTMLImageElement
    expect(img.getAttribute('src')).toBe('/api/collections/photos/items/1/thumbnail')
  })

  it('searches by text with filters, pages with load more, and runs "more like this"', async () => {
    const bodies: unknown[] = []
    stubFetch({
      'GET /collections/photos/items': () => ({ body: { items: [item(1)], total: 1, offset: 0, limit: 24 } }),
      'POST /collections/photos/search': (init) => {
        const body = JSON.parse(String(init?.body))
        bodies.push(body)
        const results = Array.from({ length: body.offset === 0 ? 20 : 5 }, (_, i) => ({
          ...item(body.offset + i + 1),
          score: 0.9 - (body.offset + i) * 0.01,
        }))
        return { body: { results, total: 25, weights: 'random' } }
      },
    })
    const onWeights = vi.fn()
    render(
      <CollectionsPage
        active
        collections={[collection]}
        selected="photos"
        onSelect={() => {}}
        refreshCollections={async () => {}}
        onWeights={onWeights}
      />,
    )
    fireEvent.change(screen.getByLabelText('Search text'), { target: { value: 'a cat' } })
    fireEvent.change(screen.getByLabelText('Kind'), { target: { value: 'image' } })
    fireEvent.change(screen.getByLabelText('Metadata'), { target: { value: 'camera=fuji' } })
    fireEvent.click(screen.getByRole('button', { name: 'Search' }))
    await waitFor(() => expect(screen.getAllByTestId('search-result')).toHaveLength(20))
    expect(bodies[0]).toEqual({ text: 'a cat', top_k: 20, offset: 0, kind: 'image', filters: { camera: 'fuji' } })
    expect(within(screen.getAllByTestId('search-result')[0]).getByTestId('score').textContent).toBe('0.900')
    expect(onWeights).toHaveBeenCalledWith('random')

    fireEvent.click(screen.getByRole('button', { name: 'Load more results' }))
    await waitFor(() => expect(screen.getAllByTestId('search-result')).toHaveLength(25))
    expect((bodies[1] as { offset: number }).offset).toBe(20)
    expect(screen.queryByRole('button', { name: 'Load more results' })).toBeNull()

    fireEvent.click(within(screen.getAllByTestId('search-result')[2]).getByRole('button', { name: /more like/i }))
    await waitFor(() => expect(bodies).toHaveLength(3))
    expect(bodies[2]).toMatchObject({ item_id: 3, offset: 0 })
  })

  it('shows a search error message from the API', async () => {
    stubFetch({
      'GET /collections/photos/items': () => ({ body: { items: [], total: 0, offset: 0, limit: 24 } }),
      'POST /collections/photos/search': () => ({ status: 422, body: { error: { code: 'invalid', message: 'text is empty' } } }),
    })
    render(
      <CollectionsPage active collections={[collection]} selected="photos" onSelect={() => {}} refreshCollections={async () => {}} />,
    )
    fireEvent.change(screen.getByLabelText('Search text'), { target: { value: 'x' } })
    fireEvent.click(screen.getByRole('button', { name: 'Search' }))
    expect((await screen.findByTestId('search-error')).textContent).toBe('text is empty')
  })
})

describe('CollectionsPage summary and query notes', () => {
  it('counts images and texts, and says when the text query was truncated', async () => {
    stubFetch({
      'GET /collections/photos/items': () => ({ body: { items: [item(1)], total: 1, offset: 0, limit: 24 } }),
      'POST /collections/photos/search': () => ({ body: { results: [{ ...item(1), score: 0.5 }], total: 1, query_truncated: true } }),
    })
    const one: Collection = { ...collection, item_count: 2, image_count: 1, text_count: 1, model: 'ViT-B-32', pretrained: 'openai' }
    render(<CollectionsPage active collections={[one]} selected="photos" onSelect={() => {}} refreshCollections={async () => {}} />)
    expect(screen.getByTestId('collection-summary').textContent).toBe('2 items (1 image, 1 text) · ViT-B-32/openai')
    fireEvent.change(screen.getByLabelText('Search text'), { target: { value: 'a very long caption' } })
    fireEvent.click(screen.getByRole('button', { name: 'Search' }))
    await waitFor(() => expect(screen.getAllByTestId('search-result')).toHaveLength(1))
    expect(screen.getByText('query truncated')).toBeTruthy()
    expect(screen.getByTestId('search-summary').textContent).toBe('1 result for “a very long caption”')
  })
})
