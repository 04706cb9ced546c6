import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { MapPage } from '../components/MapPage'
import { MapView } from '../components/MapView'
import { computeExtent, makeScale } from '../lib/mapScale'
import type { MapPoint } from '../lib/types'
import { stubFetch } from './helpers'

afterEach(() => {
  cleanup()
  vi.unstubAllGlobals()
})

describe('map scaling', () => {
  it('maps the extent corners to the padded box, y upwards', () => {
    const s = makeScale(
      [
        { x: -2, y: 10 },
        { x: 6, y: 30 },
      ],
      200,
      100,
      10,
    )
    expect(s.toScreen({ x: -2, y: 10 })).toEqual({ x: 10, y: 90 })
    expect(s.toScreen({ x: 6, y: 30 })).toEqual({ x: 190, y: 10 })
    expect(s.toScreen({ x: 2, y: 20 })).toEqual({ x: 100, y: 50 })
  })

  it('centres degenerate axes and a single point', () => {
    const s = makeScale([{ x: 3, y: 3 }], 200, 100, 10)
    expect(s.toScreen({ x: 3, y: 3 })).toEqual({ x: 100, y: 50 })
    const flat = makeScale(
      [
        { x: 0, y: 1 },
        { x: 4, y: 1 },
      ],
      200,
      100,
      0,
    )
    expect(flat.toScreen({ x: 4, y: 1 })).toEqual({ x: 200, y: 50 })
  })

  it('ignores non-finite coordinates and survives no points', () => {
    expect(computeExtent([{ x: NaN, y: 1 }, { x: 1, y: 2 }, { x: 3, y: Infinity }])).toEqual({
      minX: 0.5,
      maxX: 1.5,
      minY: 1.5,
      maxY: 2.5,
    })
    expect(computeExtent([])).toEqual({ minX: -1, maxX: 1, minY: -1, maxY: 1 })
  })
})

const points: MapPoint[] = [
  { id: 1, x: 0, y: 0, kind: 'image', filename: 'a.png', thumbnail_url: '/collections/c/items/1/thumbnail' },
  { id: 2, x: 1, y: 1, kind: 'image', filename: 'b.png', thumbnail_url: '/collections/c/items/2/thumbnail' },
  { id: 3, x: 0.5, y: 0.2, kind: 'text', filename: 'note.txt', thumbnail_url: null, text: 'a short note' },
]

describe('MapView', () => {
  it('draws one dot per point inside the box', () => {
    render(<MapView points={points} label="Map" width={400} height={300} />)
    const dots = screen.getAllByTestId('map-point')
    expect(dots).toHaveLength(3)
    for (const d of dots) {
      const cx = Number(d.getAttribute('cx'))
      const cy = Number(d.getAttribute('cy'))
      expect(cx).toBeGreaterThanOrEqual(0)
      expect(cx).toBeLessThanOrEqual(400)
      expect(cy).toBeGreaterThanOrEqual(0)
      expect(cy).toBeLessThanOrEqual(300)
    }
    expect(screen.queryByTestId('map-query-point')).toBeNull()
  })

  it('shows the thumbnail, under the API base, on hover', () => {
    render(<MapView points={points} label="Map" />)
    fireEvent.mouseEnter(screen.getAllByTestId('map-point')[1])
    const tip = screen.getByTestId('map-tooltip')
    expect(tip.querySelector('img')?.getAttribute('src')).toBe('/api/collections/c/items/2/thumbnail')
    expect(tip.textContent).toContain('b.png')
    fireEvent.focus(screen.getAllByTestId('map-point')[2])
    expect(screen.getByTestId('map-tooltip').textContent).toContain('a short note')
  })

  it('draws the query marker and widens the extent to include it', () => {
    render(<MapView points={points} query={{ x: 3, y: -1, text: 'a red car' }} label="Map" width={400} height={300} />)
    const marker = screen.getByTestId('map-query-point')
    expect(marker.getAttribute('aria-label')).toBe('Query: a red car')
    // the query is the new right-most, lowest point: it sits at the padded corner
    const s = makeScale([...points, { x: 3, y: -1 }], 400, 300, 24)
    expect(s.toScreen({ x: 3, y: -1 })).toEqual({ x: 376, y: 276 })
    const first = screen.getAllByTestId('map-point')[0]
    expect(Number(first.getAttribute('cx'))).toBeCloseTo(s.toScreen(points[0]).x)
  })
})

describe('MapPage', () => {
  it('loads the map of the chosen collection and projects a text onto it', async () => {
    const projected: unknown[] = []
    stubFetch({
      'GET /collections/c/map': () => ({ body: { method: 'pca', points, total: 40, sampled: true } }),
      'POST /collections/c/map/project': (init) => {
        projected.push(JSON.parse(String(init?.body)))
        return { body: { x: 0.25, y: 0.5, method: 'pca' } }
      },
    })
    const collections = [{ name: 'c', item_count: 40 }]
    render(
      <MapPage active collections={collections} selected="c" onSelect={() => {}} refreshCollections={async () => {}} />,
    )
    await waitFor(() => expect(screen.getAllByTestId('map-point')).toHaveLength(3))
    expect(screen.getByTestId('map-summary').textContent).toContain('3 points (a sample of 40 items) · layout: pca')
    expect(screen.queryByTestId('map-query-point')).toBeNull()

    fireEvent.change(screen.getByLabelText('Project text onto the map'), { target: { value: ' a red car ' } })
    fireEvent.click(screen.getByRole('button', { name: 'Project' }))
    const marker = await screen.findByTestId('map-query-point')
    expect(marker.getAttribute('aria-label')).toBe('Query: a red car')
    expect(projected).toEqual([{ text: 'a red car' }])
  })

  it('shows the API error when the map cannot be made', async () => {
    stubFetch({
      'GET /collections/c/map': () => ({
        status: 409,
        body: { error: { code: 'model_mismatch', message: 'This collection was embedded with another model.' } },
      }),
    })
    render(
      <MapPage active collections={[{ name: 'c', item_count: 1 }]} selected="c" onSelect={() => {}} refreshCollections={async () => {}} />,
    )
    expect((await screen.findByRole('alert')).textContent).toBe('This collection was embedded with another model.')
    expect(screen.queryByTestId('map-view')).toBeNull()
  })
})
