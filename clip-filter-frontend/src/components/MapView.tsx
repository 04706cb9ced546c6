import { useMemo, useState } from 'react'
import { apiUrl } from '../lib/api'
import { SafeImg } from './SafeImg'
import { makeScale } from '../lib/mapScale'
import type { MapPoint } from '../lib/types'

export interface QueryMarker {
  x: number
  y: number
  text: string
}

interface MapViewProps {
  points: MapPoint[]
  query?: QueryMarker | null
  width?: number
  height?: number
  label: string
}

const PADDING = 24

function pointLabel(p: MapPoint): string {
  return p.filename || p.text || `${p.kind} ${p.id}`
}

/** A plain SVG scatter plot: one dot per item, the thumbnail on hover or focus, the query as a star. */
export function MapView({ points, query = null, width = 800, height = 560, label }: MapViewProps) {
  const [hovered, setHovered] = useState<MapPoint | null>(null)
  // The query takes part in the extent, so a projection outside the points' range is still drawn.
  const scale = useMemo(
    () => makeScale(query ? [...points, query] : points, width, height, PADDING),
    [points, query, width, height],
  )
  const hoveredAt = hovered ? scale.toScreen(hovered) : null
  const q = query ? scale.toScreen(query) : null

  return (
    <div className="map-view" data-testid="map-view">
      <svg
        viewBox={`0 0 ${width} ${height}`}
        role="group"
        aria-label={label}
        className="map-svg"
        onMouseLeave={() => setHovered(null)}
      >
        <rect x={0} y={0} width={width} height={height} className="map-bg" />
        {points.map((p) => {
          const s = scale.toScreen(p)
          return (
            <circle
              key={p.id}
              data-testid="map-point"
              data-item-id={p.id}
              className={`map-point kind-${p.kind}${hovered?.id === p.id ? ' hovered' : ''}`}
              cx={s.x}
              cy={s.y}
              r={hovered?.id === p.id ? 8 : 5.5}
              role="img"
              aria-label={pointLabel(p)}
              tabIndex={0}
              onMouseEnter={() => setHovered(p)}
              onFocus={() => setHovered(p)}
              onBlur={() => setHovered((h) => (h?.id === p.id ? null : h))}
            />
          )
        })}
        {q && query && (
          <g data-testid="map-query-point" className="map-query" role="img" aria-label={`Query: ${query.text}`}>
            <path
              d={starPath(q.x, q.y, 12, 5)}
              className="map-query-star"
            />
            <text
              x={q.x > width * 0.7 ? q.x - 14 : q.x + 14}
              y={q.y + 4}
              textAnchor={q.x > width * 0.7 ? 'end' : 'start'}
              className="map-query-label"
            >
              {query.text.length > 40 ? `${query.text.slice(0, 39)}…` : query.text}
            </text>
          </g>
        )}
      </svg>
      {hovered && hoveredAt && (
        <div
          className="map-tooltip"
          data-testid="map-tooltip"
          style={{
            left: `${(hoveredAt.x / width) * 100}%`,
            top: `${(hoveredAt.y / height) * 100}%`,
          }}
        >
          {hovered.kind === 'image' && hovered.thumbnail_url ? (
            <SafeImg src={apiUrl(hovered.thumbnail_url)} alt={pointLabel(hovered)} />
          ) : hovered.text ? (
            <blockquote>{hovered.text.length > 160 ? `${hovered.text.slice(0, 159)}…` : hovered.text}</blockquote>
          ) : null}
          <span className="map-tooltip-name">{pointLabel(hovered)}</span>
        </div>
      )}
    </div>
  )
}

function starPath(cx: number, cy: number, outer: number, inner: number): string {
  const parts: string[] = []
  for (let i = 0; i < 10; i++) {
    const r = i % 2 === 0 ? outer : inner
    const a = (Math.PI / 5) * i - Math.PI / 2
    parts.push(`${i === 0 ? 'M' : 'L'}${(cx + r * Math.cos(a)).toFixed(2)},${(cy + r * Math.sin(a)).toFixed(2)}`)
  }
  return `${parts.join(' ')} Z`
}
