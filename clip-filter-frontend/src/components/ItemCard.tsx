import type { MouseEvent } from 'react'
import { apiUrl, errorMessage, fetchObjectUrl, mediaNeedsKey } from '../lib/api'
import type { ItemKind } from '../lib/types'
import { SafeImg } from './SafeImg'

interface CardItem {
  id: number
  kind: ItemKind
  filename?: string | null
  text?: string | null
  metadata?: Record<string, unknown> | null
  content_url: string
  thumbnail_url?: string | null
}

interface ItemCardProps {
  item: CardItem
  score?: number
  testId: string
  onMoreLikeThis?: (item: CardItem) => void
}

function snippet(text: string, max = 180): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text
}

function metadataEntries(metadata: CardItem['metadata']): [string, string][] {
  if (!metadata || typeof metadata !== 'object') return []
  return Object.entries(metadata).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)])
}

export function itemLabel(item: CardItem): string {
  return item.filename || (item.text ? snippet(item.text, 40) : `item ${item.id}`)
}

/** With a key, a plain link would go without it: fetch with the key and open what came back. */
function openWithKey(e: MouseEvent<HTMLAnchorElement>, href: string) {
  if (!mediaNeedsKey(href)) return
  e.preventDefault()
  const tab = window.open('', '_blank')
  fetchObjectUrl(href).then(
    (url) => {
      if (tab) tab.location.href = url
      else window.location.assign(url)
    },
    (err) => {
      tab?.close()
      window.alert(errorMessage(err))
    },
  )
}

export function ItemCard({ item, score, testId, onMoreLikeThis }: ItemCardProps) {
  const label = itemLabel(item)
  const contentHref = apiUrl(item.content_url)
  const meta = metadataEntries(item.metadata)
  return (
    <li className={`item-card kind-${item.kind}`} data-testid={testId} data-item-id={item.id}>
      <a
        className="item-media"
        href={contentHref}
        target="_blank"
        rel="noreferrer"
        title={`Open ${label}`}
        onClick={(e) => openWithKey(e, contentHref)}
      >
        {item.kind === 'image' ? (
          <SafeImg src={apiUrl(item.thumbnail_url || item.content_url)} alt={label} loading="lazy" />
        ) : (
          <blockquote className="item-text">{item.text ? snippet(item.text) : label}</blockquote>
        )}
      </a>
      <div className="item-info">
        <span className="item-name" title={label}>
          <span className={`kind-badge kind-badge-${item.kind}`}>{item.kind}</span> {label}
        </span>
        {score !== undefined && (
          <span className="item-score" data-testid="score" title="cosine similarity">
            {score.toFixed(3)}
          </span>
        )}
      </div>
      {meta.length > 0 && (
        <dl className="item-meta">
          {meta.slice(0, 4).map(([k, v]) => (
            <div key={k}>
              <dt>{k}</dt>
              <dd>{v}</dd>
            </div>
          ))}
        </dl>
      )}
      {onMoreLikeThis && (
        <button
          type="button"
          className="link-button"
          aria-label={`More like ${label}`}
          onClick={() => onMoreLikeThis(item)}
        >
          More like this
        </button>
      )}
    </li>
  )
}
