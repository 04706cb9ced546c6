import { useState } from 'react'
import { createCollection, errorMessage } from '../lib/api'
import { COLLECTION_NAME } from '../lib/filters'
import type { Collection } from '../lib/types'

interface CollectionPickerProps {
  collections: Collection[]
  selected: string | null
  onSelect: (name: string | null) => void
  onCreated?: (c: Collection) => void
  onRefresh?: () => void
  allowCreate?: boolean
  idPrefix: string
}

export function CollectionPicker({
  collections,
  selected,
  onSelect,
  onCreated,
  onRefresh,
  allowCreate = true,
  idPrefix,
}: CollectionPickerProps) {
  const [name, setName] = useState('')
  const [description, setDescription] = useState('')
  const [error, setError] = useState<string | null>(null)
  const [busy, setBusy] = useState(false)

  async function create() {
    const n = name.trim()
    if (!COLLECTION_NAME.test(n)) {
      setError('A name is 1 to 64 letters, digits, "_", "." or "-".')
      return
    }
    setBusy(true)
    setError(null)
    try {
      const c = await createCollection(n, description.trim() || undefined)
      setName('')
      setDescription('')
      onCreated?.(c)
      onSelect(c.name)
    } catch (e) {
      setError(errorMessage(e))
    } finally {
      setBusy(false)
    }
  }

  return (
    <div className="collection-picker">
      <div className="field-row">
        <label htmlFor={`${idPrefix}-collection`}>Collection</label>
        <select
          id={`${idPrefix}-collection`}
          value={selected ?? ''}
          onChange={(e) => onSelect(e.target.value || null)}
        >
          <option value="">{collections.length ? '— pick a collection —' : '— no collections yet —'}</option>
          {collections.map((c) => (
            <option key={c.name} value={c.name}>
              {c.name} ({c.item_count} item{c.item_count === 1 ? '' : 's'})
            </option>
          ))}
        </select>
        {onRefresh && (
          <button type="button" className="secondary" onClick={onRefresh} aria-label="Refresh the collection list">
            ↻
          </button>
        )}
      </div>
      {allowCreate && (
        <form
          className="field-row create-collection"
          aria-label="Create a collection"
          onSubmit={(e) => {
            e.preventDefault()
            void create()
          }}
        >
          <label htmlFor={`${idPrefix}-new-name`} className="visually-hidden">
            New collection name
          </label>
          <input
            id={`${idPrefix}-new-name`}
            type="text"
            placeholder="new collection name"
            value={name}
            maxLength={64}
            onChange={(e) => setName(e.target.value)}
          />
          <label htmlFor={`${idPrefix}-new-description`} className="visually-hidden">
            New collection description
          </label>
          <input
            id={`${idPrefix}-new-description`}
            type="text"
            placeholder="description (optional)"
            value={description}
            onChange={(e) => setDescription(e.target.value)}
          />
          <button type="submit" className="secondary" disabled={busy || !name.trim()}>
            Create collection
          </button>
        </form>
      )}
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </div>
  )
}
