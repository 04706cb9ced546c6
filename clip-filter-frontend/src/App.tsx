import { useCallback, useEffect, useMemo, useRef, useState, type KeyboardEvent } from 'react'
import { Banners } from './components/Banners'
import { CollectionsPage } from './components/CollectionsPage'
import { KeyDialog } from './components/KeyDialog'
import { MapPage } from './components/MapPage'
import { MatchPage } from './components/MatchPage'
import { ApiError, errorMessage, getInfo, listCollections } from './lib/api'
import { currentApiKey, forgetApiKey, onAuthRequired, setApiKey } from './lib/auth'
import { modelBanners } from './lib/banners'
import type { Collection, Info, Weights } from './lib/types'

const TABS = [
  { id: 'match', label: 'Match' },
  { id: 'collections', label: 'Collections & search' },
  { id: 'map', label: 'Map' },
] as const
type TabId = (typeof TABS)[number]['id']

function tabFromHash(): TabId {
  const h = typeof window === 'undefined' ? '' : window.location.hash.replace('#', '')
  return (TABS.find((t) => t.id === h)?.id ?? 'match') as TabId
}

const STORED_COLLECTION = 'clip-filter.collection'

function useModelInfo(epoch: number) {
  const [info, setInfo] = useState<Info | null>(null)
  const [error, setError] = useState<string | null>(null)
  useEffect(() => {
    let cancelled = false
    let timer: number | undefined
    async function poll() {
      let delay = 0
      try {
        const next = await getInfo()
        if (cancelled) return
        setInfo(next)
        setError(null)
        delay = next.state === 'ready' ? 0 : next.state === 'loading' ? 2000 : 15000
      } catch (e) {
        if (cancelled) return
        // 401: the key dialog is up; a new key starts a new epoch, which polls again.
        if (e instanceof ApiError && e.status === 401) return setError(null)
        setError(errorMessage(e))
        delay = 5000
      }
      if (delay > 0) timer = window.setTimeout(poll, delay)
    }
    void poll()
    return () => {
      cancelled = true
      window.clearTimeout(timer)
    }
  }, [epoch])
  return { info, error }
}

/** The API key flow: a 401 opens the dialog; a new key (or forgetting it) starts a new epoch, which reloads. */
function useApiKey() {
  const [asking, setAsking] = useState(false)
  const [hasKey, setHasKey] = useState(() => currentApiKey() !== null)
  const [epoch, setEpoch] = useState(0)
  useEffect(() => onAuthRequired(() => setAsking(true)), [])
  const submit = useCallback((key: string) => {
    setApiKey(key)
    setHasKey(true)
    setAsking(false)
    setEpoch((n) => n + 1)
  }, [])
  const forget = useCallback(() => {
    forgetApiKey()
    setHasKey(false)
    setEpoch((n) => n + 1)
  }, [])
  return { asking, hasKey, epoch, submit, forget, cancel: () => setAsking(false) }
}

export function App() {
  const [tab, setTab] = useState<TabId>(tabFromHash)
  const apiKey = useApiKey()
  const { info, error: infoError } = useModelInfo(apiKey.epoch)
  const [responseWeights, setResponseWeights] = useState<Weights | null>(null)
  const [collections, setCollections] = useState<Collection[]>([])
  const [selected, setSelected] = useState<string | null>(() => {
    try {
      return window.localStorage.getItem(STORED_COLLECTION)
    } catch {
      return null
    }
  })
  const tabRefs = useRef<Record<string, HTMLButtonElement | null>>({})

  useEffect(() => {
    const onHash = () => setTab(tabFromHash())
    window.addEventListener('hashchange', onHash)
    return () => window.removeEventListener('hashchange', onHash)
  }, [])

  // A remembered collection (from an earlier visit) that no longer exists is forgotten once the list is known.
  const storedChecked = useRef(false)
  const refreshCollections = useCallback(async () => {
    try {
      const list = await listCollections()
      setCollections(list)
      if (!storedChecked.current) {
        storedChecked.current = true
        setSelected((cur) => (cur && !list.some((c) => c.name === cur) ? null : cur))
      }
    } catch {
      // the pages show their own errors; the list just stays as it was
    }
  }, [])

  useEffect(() => {
    if (tab !== 'match') void refreshCollections()
  }, [tab, refreshCollections, apiKey.epoch])

  const select = useCallback((name: string | null) => {
    setSelected(name)
    try {
      if (name) window.localStorage.setItem(STORED_COLLECTION, name)
      else window.localStorage.removeItem(STORED_COLLECTION)
    } catch {
      // storage unavailable: fine
    }
  }, [])

  function choose(id: TabId) {
    setTab(id)
    if (window.location.hash !== `#${id}`) window.history.replaceState(null, '', `#${id}`)
  }

  function onTabKey(e: KeyboardEvent<HTMLButtonElement>, index: number) {
    let next = -1
    if (e.key === 'ArrowRight') next = (index + 1) % TABS.length
    else if (e.key === 'ArrowLeft') next = (index - 1 + TABS.length) % TABS.length
    else if (e.key === 'Home') next = 0
    else if (e.key === 'End') next = TABS.length - 1
    if (next < 0) return
    e.preventDefault()
    choose(TABS[next].id)
    tabRefs.current[TABS[next].id]?.focus()
  }

  const banners = useMemo(() => modelBanners(info, infoError, responseWeights), [info, infoError, responseWeights])
  const modelReady = info?.state === 'ready'

  return (
    <div className="app">
      <header className="app-header">
        <h1>clip-filter</h1>
        {info && (
          <span className="model-summary muted" data-testid="model-summary">
            {info.model ?? '?'} · {info.pretrained ?? '?'}
            {info.weights && info.weights !== info.pretrained && ` (${info.weights})`}
            {info.device && ` · ${info.device}`}
            {info.dtype && ` ${info.dtype}`}
            {info.state !== 'ready' && ` · ${info.state}`}
          </span>
        )}
        <nav className="tabs" role="tablist" aria-label="Pages">
          {TABS.map((t, i) => (
            <button
              key={t.id}
              ref={(el) => {
                tabRefs.current[t.id] = el
              }}
              id={`tab-${t.id}`}
              type="button"
              role="tab"
              aria-selected={tab === t.id}
              aria-controls={`panel-${t.id}`}
              tabIndex={tab === t.id ? 0 : -1}
              className={tab === t.id ? 'tab active' : 'tab'}
              onClick={() => choose(t.id)}
              onKeyDown={(e) => onTabKey(e, i)}
            >
              {t.label}
            </button>
          ))}
        </nav>
        {apiKey.hasKey && (
          <button type="button" className="link-button forget-key" onClick={apiKey.forget} data-testid="forget-key">
            Forget key
          </button>
        )}
      </header>
      <Banners banners={banners} />
      {apiKey.asking && (
        <KeyDialog rejected={apiKey.hasKey} onSubmit={apiKey.submit} onCancel={apiKey.cancel} />
      )}
      {/* A new key remounts the pages, so everything they show is fetched again with it. */}
      <main key={apiKey.epoch}>
        <div role="tabpanel" id="panel-match" aria-labelledby="tab-match" hidden={tab !== 'match'}>
          <MatchPage active={tab === 'match'} modelReady={modelReady} onWeights={setResponseWeights} />
        </div>
        <div role="tabpanel" id="panel-collections" aria-labelledby="tab-collections" hidden={tab !== 'collections'}>
          <CollectionsPage
            active={tab === 'collections'}
            collections={collections}
            selected={selected}
            onSelect={select}
            refreshCollections={refreshCollections}
            onWeights={setResponseWeights}
          />
        </div>
        <div role="tabpanel" id="panel-map" aria-labelledby="tab-map" hidden={tab !== 'map'}>
          <MapPage
            active={tab === 'map'}
            collections={collections}
            selected={selected}
            onSelect={select}
            refreshCollections={refreshCollections}
          />
        </div>
      </main>
    </div>
  )
}
