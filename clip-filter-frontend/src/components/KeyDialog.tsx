import { useEffect, useRef, useState, type FormEvent } from 'react'

interface KeyDialogProps {
  /** A key was given before and the API refused it (wrong or revoked). */
  rejected: boolean
  onSubmit: (key: string) => void
  onCancel: () => void
}

/** Asks for an API key when the API answers 401. The key stays in this browser (localStorage) until forgotten. */
export function KeyDialog({ rejected, onSubmit, onCancel }: KeyDialogProps) {
  const [key, setKey] = useState('')
  const input = useRef<HTMLInputElement>(null)
  useEffect(() => input.current?.focus(), [])

  function submit(e: FormEvent) {
    e.preventDefault()
    if (key.trim()) onSubmit(key.trim())
  }

  return (
    <div className="dialog-backdrop">
      <form
        className="dialog"
        role="dialog"
        aria-modal="true"
        aria-labelledby="key-dialog-title"
        data-testid="key-dialog"
        onSubmit={submit}
        onKeyDown={(e) => e.key === 'Escape' && onCancel()}
      >
        <h2 id="key-dialog-title">API key needed</h2>
        <p>
          This clip-filter server needs an API key. An administrator makes one with{' '}
          <code>clip-filter keys create NAME --scope read</code>.
        </p>
        {rejected && (
          <p className="error" role="alert">
            The key was refused (unknown or revoked). Enter another one.
          </p>
        )}
        <label>
          API key
          <input
            ref={input}
            type="password"
            autoComplete="off"
            spellCheck={false}
            value={key}
            onChange={(e) => setKey(e.target.value)}
            data-testid="key-input"
          />
        </label>
        <p className="muted">It is kept in this browser until you choose “Forget key”.</p>
        <div className="dialog-actions">
          <button type="button" onClick={onCancel}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={!key.trim()} data-testid="key-submit">
            Use key
          </button>
        </div>
      </form>
    </div>
  )
}
