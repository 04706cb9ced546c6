import { useCallback, useEffect, useRef, useState } from 'react'
import {
  errorMessage,
  getJob,
  listItems,
  search,
  startJob,
  type SearchOptions,
  type SearchQuery,
} from '../lib/api'
import { parseFilters } from '../lib/filters'
import type { Collection, Item, ItemKind, Job, SearchHit, Weights } from '../lib/types'
import { CollectionPicker } from './CollectionPicker'
import { DropZone } from './DropZone'
import { ItemCard, itemLabel } from './ItemCard'
import { isJobFinished, JobProgress } from './JobProgress'

const PAGE = 24
const TOP_K = 20
const POLL_MS = 400

interface CollectionsPageProps {
  active: boolean
  collections: Collection[]
  selected: string | null
  onSelect: (name: string | null) => void
  refreshCollections: () => Promise<void>
  onWeights?: (weights: Weights | null) => void
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

function describe(q: SearchQuery): string {
  if (q.type === 'text') return `“${q.text}”`
  if (q.type === 'image') return `image ${q.image.name}`
  return `more like ${q.label ?? `item ${q.itemId}`}`
}

export function CollectionsPage({
  active,
  collections,
  selected,
  onSelect,
  refreshCollections,
  onWeights,
}: CollectionsPageProps) {
  const current = collections.find((c) => c.name === selected) ?? null

  // Browse
  const [items, setItems] = useState<Item[]>([])
  const [total, setTotal] = useState(0)
  const [itemsError, setItemsError] = useState<string | null>(null)
  const [loadingItems, setLoadingItems] = useState(false)

  // Ingest
  const [job, setJob] = useState<Job | null>(null)
  const [jobError, setJobError] = useState<string | null>(null)
  const [ingestNotice, setIngestNotice] = useState<string | null>(null)

  // Search
  const [text, setText] = useState('')
  const [kind, setKind] = useState<'' | ItemKind>('')
  const [filterText, setFilterText] = useState('')
  const [query, setQuery] = useState<SearchQuery | null>(null)
  const [results, setResults] = useState<SearchHit[]>([])
  const [resultTotal, setResultTotal] = useState<number | undefined>(undefined)
  const [hasMore, setHasMore] = useState(false)
  const [searching, setSearching] = useState(false)
  const [searchError, setSearchError] = useState<string | null>(null)
  const [queryTruncated, setQueryTruncated] = useState(false)

  const nameRef = useRef(selected)
  nameRef.current = selected

  const loadItems = useCallback(async (name: string, offset: number) => {
    setLoadingItems(true)
    setItemsError(null)
    try {
      const page = await listItems(name, offset, PAGE)
      if (nameRef.current !== name) return
      setItems((prev) => (offset === 0 ? page.items : [...prev, ...page.items]))
      setTotal(page.total)
    } catch (e) {
      if (nameRef.current === name) setItemsError(errorMessage(e))
    } finally {
      setLoadingItems(false)
    }
  }, [])

  // A new collection: reset everything, load its first page.
  useEffect(() => {
    setItems([])
    setTotal(0)
    setQuery(null)
    setResults([])
    setSearchError(null)
    setJob(null)
    setJobError(null)
    if (selected) void loadItems(selected, 0)
  }, [selected, loadItems])

  // Poll the running job until it ends, then refresh the items and the counts.
  useEffect(() => {
    if (!job || isJobFinished(job) || !job.id) return
    let cancelled = false
    const timer = window.setTimeout(async () => {
      try {
        const next = await getJob(job.id)
        if (cancelled) return
        setJob(next)
        if (isJobFinished(next)) {
          if (nameRef.current) void loadItems(nameRef.current, 0)
          void refreshCollections()
        }
      } catch (e) {
        if (!cancelled) setJobError(errorMessage(e))
      }
    }, POLL_MS)
    return () => {
      cancelled = true
      window.clearTimeout(timer)
    }
  }, [job, loadItems, refreshCollections])

  async function ingest(files: File[]) {
    if (!selected) return
    setJobError(null)
    try {
      const started = await startJob(selected, files)
      setJob(started)
      if (isJobFinished(started)) {
        void loadItems(selected, 0)
        void refreshCollections()
      }
    } catch (e) {
      setJobError(errorMessage(e))
    }
  }

  function options(offset: number): SearchOptions | null {
    const { filters, errors } = parseFilters(filterText)
    if (errors.length > 0) {
      setSearchError(`Metadata filters: ${errors.join('; ')}`)
      return null
    }
    return { topK: TOP_K, offset, kind: kind || undefined, filters }
  }

  async function runSearch(q: SearchQuery, offset = 0) {
    if (!selected) return
    const opts = options(offset)
    if (!opts) return
    setSearching(true)
    setSearchError(null)
    if (offset === 0) {
      setQuery(q)
      setResults([])
      setQueryTruncated(false)
    }
    try {
      const res = await search(selected, q, opts)
      setResults((prev) => (offset === 0 ? res.results : [...prev, ...res.results]))
      setResultTotal(res.total)
      if (offset === 0) setQueryTruncated(res.query_truncated === true)
      const shown = offset + res.results.length
      setHasMore(res.total !== undefined ? shown < res.total : res.results.length === opts.topK)
      onWeights?.(res.weights ?? res.model?.weights ?? null)
    } catch (e) {
      setSearchError(errorMessage(e))
    } finally {
      setSearching(false)
    }
  }

  function moreLikeThis(item: { id: number; kind: ItemKind; filename?: string | null; text?: string | null; content_url: string }) {
    void runSearch({ type: 'item', itemId: item.id, label: itemLabel(item) })
  }

  function clearSearch() {
    setQuery(null)
    setResults([])
    setSearchError(null)
    setHasMore(false)
  }

  const jobRunning = job !== null && !isJobFinished(job)

  return (
    <div className="page collections-page">
      <section className="panel" aria-labelledby="collections-heading">
        <h2 id="collections-heading">Collection</h2>
        <CollectionPicker
          idPrefix="collections"
          collections={collections}
          selected={selected}
          onSelect={onSelect}
          onCreated={() => void refreshCollections()}
          onRefresh={() => void refreshCollections()}
        />
        {current && (
          <p className="muted collection-summary" data-testid="collection-summary">
            {current.description ? `${current.description} · ` : ''}
            {current.item_count} item{current.item_count === 1 ? '' : 's'}
            {current.image_count !== undefined &&
              ` (${plural(current.image_count, 'image')}, ${plural(current.text_count ?? 0, 'text')})`}
            {current.model && ` · ${current.model}/${current.pretrained}`}
          </p>
        )}
      </section>

      {selected && (
        <>
          <section className="panel" aria-labelledby="ingest-heading">
            <h2 id="ingest-heading">Add files</h2>
            <DropZone
              label="Add files to the collection: drop images and .txt files here, or press Enter to choose"
              inputLabel="Choose files to add"
              accept="image/*,.txt,text/plain"
              disabled={jobRunning}
              testId="ingest-dropzone"
              onFiles={(files) => {
                setIngestNotice(null)
                void ingest(files)
              }}
              onRejected={(r) =>
                setIngestNotice(`${r.length} file(s) skipped (only images and .txt): ${r.map((f) => f.name).join(', ')}`)
              }
            >
              <strong>Drop images and .txt files here</strong>
              <span>or click to choose; each .txt file becomes one text item</span>
            </DropZone>
            {ingestNotice && <p className="notice" role="status">{ingestNotice}</p>}
            {jobError && (
              <p className="error" role="alert">
                {jobError}
              </p>
            )}
            {job && <JobProgress job={job} />}
          </section>

          <section className="panel" aria-labelledby="search-heading">
            <h2 id="search-heading">Search</h2>
            <form
              className="search-form"
              role="search"
              onSubmit={(e) => {
                e.preventDefault()
                if (text.trim()) void runSearch({ type: 'text', text: text.trim() })
              }}
            >
              <div className="field-row">
                <label htmlFor="search-text" className="visually-hidden">
                  Search text
                </label>
                <input
                  id="search-text"
                  type="search"
                  placeholder="describe what you are looking for"
                  value={text}
                  onChange={(e) => setText(e.target.value)}
                />
                <button type="submit" className="primary" disabled={!text.trim() || searching}>
                  Search
                </button>
              </div>
              <div className="field-row filters">
                <label htmlFor="search-kind">Kind</label>
                <select id="search-kind" value={kind} onChange={(e) => setKind(e.target.value as '' | ItemKind)}>
                  <option value="">all</option>
                  <option value="image">images</option>
                  <option value="text">texts</option>
                </select>
                <label htmlFor="search-filters">Metadata</label>
                <input
                  id="search-filters"
                  type="text"
                  placeholder="key=value, key2=value2"
                  value={filterText}
                  onChange={(e) => setFilterText(e.target.value)}
                />
              </div>
            </form>
            <DropZone
              label="Search by image: drop an image here, or press Enter to choose one"
              inputLabel="Choose an image to search with"
              accept="image/*"
              multiple={false}
              compact
              testId="search-image-dropzone"
              onFiles={(files) => void runSearch({ type: 'image', image: files[0] })}
            >
              <span>
                <strong>Search by image:</strong> drop one here or click to choose
              </span>
            </DropZone>
            {searchError && (
              <p className="error" role="alert" data-testid="search-error">
                {searchError}
              </p>
            )}
            {query && (
              <div className="results-head">
                <span data-testid="search-summary">
                  {searching && results.length === 0
                    ? `Searching ${describe(query)}…`
                    : `${resultTotal ?? results.length} result${(resultTotal ?? results.length) === 1 ? '' : 's'} for ${describe(query)}`}
                </span>
                {queryTruncated && (
                  <span className="truncated-badge" title="Longer than the model's context: cut to fit">
                    query truncated
                  </span>
                )}
                <button type="button" className="link-button" onClick={clearSearch}>
                  Clear search
                </button>
              </div>
            )}
            {query && results.length > 0 && (
              <ul className="item-grid" aria-label="Search results">
                {results.map((r, i) => (
                  <ItemCard key={`${r.id}-${i}`} item={r} score={r.score} testId="search-result" onMoreLikeThis={moreLikeThis} />
                ))}
              </ul>
            )}
            {query && hasMore && (
              <button
                type="button"
                className="secondary load-more"
                disabled={searching}
                onClick={() => void runSearch(query, results.length)}
              >
                Load more results
              </button>
            )}
          </section>

          <section className="panel" aria-labelledby="items-heading">
            <h2 id="items-heading">
              Items <span className="muted">({total})</span>
            </h2>
            {itemsError && (
              <p className="error" role="alert">
                {itemsError}
              </p>
            )}
            {items.length === 0 && !loadingItems && !itemsError && (
              <p className="muted">No items yet: drop images or .txt files above.</p>
            )}
            <ul className="item-grid" aria-label="Items">
              {items.map((item) => (
                <ItemCard key={item.id} item={item} testId="item-card" onMoreLikeThis={moreLikeThis} />
              ))}
            </ul>
            {items.length < total && (
              <button
                type="button"
                className="secondary load-more"
                disabled={loadingItems}
                onClick={() => selected && void loadItems(selected, items.length)}
              >
                Load more items
              </button>
            )}
          </section>
        </>
      )}
      {!selected && active && (
        <p className="muted">Create a collection, or pick one, to add files and search it.</p>
      )}
    </div>
  )
}
