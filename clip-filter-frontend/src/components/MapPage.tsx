import { useCallback, useEffect, useRef, useState } from 'react'
import { errorMessage, getMap, projectText } from '../lib/api'
import type { Collection, MapResponse } from '../lib/types'
import { CollectionPicker } from './CollectionPicker'
import { MapView, type QueryMarker } from './MapView'

interface MapPageProps {
  active: boolean
  collections: Collection[]
  selected: string | null
  onSelect: (name: string | null) => void
  refreshCollections: () => Promise<void>
}

export function MapPage({ active, collections, selected, onSelect, refreshCollections }: MapPageProps) {
  const [map, setMap] = useState<MapResponse | null>(null)
  const [mapFor, setMapFor] = useState<string | null>(null)
  const [loading, setLoading] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const [text, setText] = useState('')
  const [query, setQuery] = useState<QueryMarker | null>(null)
  const [projecting, setProjecting] = useState(false)
  const [projectError, setProjectError] = useState<string | null>(null)

  const latest = useRef<string | null>(null)
  const load = useCallback(async (name: string) => {
    latest.current = name
    setLoading(true)
    setError(null)
    try {
      const res = await getMap(name)
      if (latest.current !== name) return
      setMap(res)
      setMapFor(name)
    } catch (e) {
      if (latest.current !== name) return
      setMap(null)
      setMapFor(name)
      setError(errorMessage(e))
    } finally {
      if (latest.current === name) setLoading(false)
    }
  }, [])

  // Load each time the page is shown (the collection may have grown meanwhile) or the collection changes.
  useEffect(() => {
    if (!selected) {
      setMap(null)
      setMapFor(null)
      setQuery(null)
      return
    }
    if (active) void load(selected)
  }, [active, selected, load])

  // A query belongs to the collection it was projected on.
  useEffect(() => setQuery(null), [selected])

  async function project() {
    const t = text.trim()
    if (!selected || !t) return
    setProjecting(true)
    setProjectError(null)
    try {
      const p = await projectText(selected, t)
      setQuery({ x: p.x, y: p.y, text: t })
    } catch (e) {
      setProjectError(errorMessage(e))
    } finally {
      setProjecting(false)
    }
  }

  const shown = mapFor === selected ? map : null
  const points = shown?.points ?? []
  return (
    <div className="page map-page">
      <section className="panel" aria-labelledby="map-heading">
        <h2 id="map-heading">Map</h2>
        <CollectionPicker
          idPrefix="map"
          collections={collections}
          selected={selected}
          onSelect={onSelect}
          allowCreate={false}
          onRefresh={() => void refreshCollections()}
        />
        {selected && (
          <>
            <div className="map-toolbar">
              <form
                className="field-row"
                onSubmit={(e) => {
                  e.preventDefault()
                  void project()
                }}
              >
                <label htmlFor="map-project-text" className="visually-hidden">
                  Project text onto the map
                </label>
                <input
                  id="map-project-text"
                  type="text"
                  placeholder="type a caption to place it on the map"
                  value={text}
                  onChange={(e) => setText(e.target.value)}
                />
                <button type="submit" className="primary" disabled={!text.trim() || projecting || points.length === 0}>
                  Project
                </button>
              </form>
              <button type="button" className="secondary" disabled={loading} onClick={() => void load(selected)}>
                Reload map
              </button>
            </div>
            {projectError && (
              <p className="error" role="alert">
                {projectError}
              </p>
            )}
            {error && (
              <p className="error" role="alert">
                {error}
              </p>
            )}
            {loading && <p className="muted" role="status">Computing the map…</p>}
            {shown && (
              <>
                <p className="muted map-summary" data-testid="map-summary">
                  {points.length} point{points.length === 1 ? '' : 's'}
                  {shown.sampled && shown.total !== undefined && ` (a sample of ${shown.total} items)`} · layout:{' '}
                  {shown.method}
                  <span className="legend">
                    <span className="legend-dot kind-image" /> image <span className="legend-dot kind-text" /> text{' '}
                    <span className="legend-star">★</span> query
                  </span>
                </p>
                {points.length === 0 ? (
                  <p className="muted">This collection has no items yet.</p>
                ) : (
                  <MapView points={points} query={query} label={`Map of collection ${selected}`} />
                )}
              </>
            )}
          </>
        )}
      </section>
    </div>
  )
}
