import { useEffect, useRef, useState } from 'react'
import { errorMessage, matchImages } from '../lib/api'
import { isImageFile, namePasted, formatBytes } from '../lib/files'
import type { MatchResponse, Weights } from '../lib/types'
import { usePasteFiles } from '../lib/usePaste'
import { CaptionList, newCaption, type Caption } from './CaptionList'
import { DropZone } from './DropZone'
import { MatchResults } from './MatchResults'
import { SafeImg } from './SafeImg'

interface Picked {
  id: number
  file: File
  url: string
}

let pickedId = 1

function matchLabel(n: number): string {
  if (n === 0) return 'Match'
  return `Match ${n} image${n === 1 ? '' : 's'}`
}

interface MatchPageProps {
  active: boolean
  modelReady: boolean
  onWeights?: (weights: Weights | null) => void
}

export function MatchPage({ active, modelReady, onWeights }: MatchPageProps) {
  const [images, setImages] = useState<Picked[]>([])
  const [captions, setCaptions] = useState<Caption[]>(() => [newCaption(), newCaption()])
  const [response, setResponse] = useState<MatchResponse | null>(null)
  const [sent, setSent] = useState<Picked[]>([])
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const [notice, setNotice] = useState<string | null>(null)

  // Object URLs: revoke those of images no longer shown (neither picked nor in the shown results).
  const live = useRef(new Set<string>())
  useEffect(() => {
    const keep = new Set([...images, ...sent].map((p) => p.url))
    for (const url of live.current) {
      if (!keep.has(url)) URL.revokeObjectURL(url)
    }
    live.current = keep
  }, [images, sent])
  useEffect(() => () => live.current.forEach((url) => URL.revokeObjectURL(url)), [])

  function addFiles(files: File[]) {
    const accepted = files.filter(isImageFile)
    const skipped = files.length - accepted.length
    setNotice(skipped > 0 ? `${skipped} file(s) skipped: not images.` : null)
    if (accepted.length === 0) return
    setImages((prev) => [
      ...prev,
      ...accepted.map((file) => ({ id: pickedId++, file, url: URL.createObjectURL(file) })),
    ])
  }

  usePasteFiles(active, (files) => addFiles(files.map(namePasted)))

  const texts = captions.map((c) => c.text.trim()).filter((t) => t.length > 0)
  const canSubmit = images.length > 0 && texts.length > 0 && !busy

  async function submit() {
    if (!canSubmit) return
    setBusy(true)
    setError(null)
    const batch = images
    try {
      const res = await matchImages(
        batch.map((p) => p.file),
        texts,
      )
      setSent(batch)
      setResponse(res)
      onWeights?.(res.weights ?? res.model?.weights ?? null)
    } catch (e) {
      setError(errorMessage(e))
    } finally {
      setBusy(false)
    }
  }

  return (
    <div className="page match-page">
      <div className="match-layout">
        <section className="panel" aria-labelledby="match-images-heading">
          <h2 id="match-images-heading">Images</h2>
          <DropZone
            label="Add images: drop them here, or press Enter to choose files"
            inputLabel="Choose images"
            accept="image/*"
            testId="match-dropzone"
            onFiles={addFiles}
            onRejected={(r) => setNotice(`${r.length} file(s) skipped: not images.`)}
          >
            <strong>Drop images here</strong>
            <span>or click to choose, or paste from the clipboard</span>
          </DropZone>
          {notice && <p className="notice" role="status">{notice}</p>}
          {images.length > 0 && (
            <ul className="thumbs" aria-label="Chosen images">
              {images.map((p) => (
                <li key={p.id} className="thumb" data-testid="picked-image">
                  <SafeImg src={p.url} alt={p.file.name} />
                  <span className="thumb-name" title={p.file.name}>
                    {p.file.name}
                  </span>
                  <span className="thumb-size muted">{formatBytes(p.file.size)}</span>
                  <button
                    type="button"
                    className="icon-button thumb-remove"
                    aria-label={`Remove ${p.file.name}`}
                    title="Remove"
                    onClick={() => setImages((prev) => prev.filter((x) => x.id !== p.id))}
                  >
                    ×
                  </button>
                </li>
              ))}
            </ul>
          )}
          {images.length > 1 && (
            <button type="button" className="link-button" onClick={() => setImages([])}>
              Remove all images
            </button>
          )}
        </section>

        <section className="panel" aria-labelledby="match-captions-heading">
          <h2 id="match-captions-heading" className="visually-hidden">
            Captions
          </h2>
          <form
            onSubmit={(e) => {
              e.preventDefault()
              void submit()
            }}
          >
            <CaptionList captions={captions} onChange={setCaptions} />
            <div className="actions">
              <button type="submit" className="primary" disabled={!canSubmit} aria-busy={busy}>
                {busy ? 'Matching…' : matchLabel(images.length)}
              </button>
              {!modelReady && <span className="muted">The model is not ready yet.</span>}
            </div>
          </form>
        </section>
      </div>

      {error && (
        <p className="error" role="alert" data-testid="match-request-error">
          {error}
        </p>
      )}
      {response && <MatchResults response={response} previews={sent.map((p) => p.url)} />}
    </div>
  )
}
