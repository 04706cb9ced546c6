export interface Caption {
  id: number
  text: string
}

let nextId = 1
export function newCaption(text = ''): Caption {
  return { id: nextId++, text }
}

interface CaptionListProps {
  captions: Caption[]
  onChange: (captions: Caption[]) => void
  maxCaptions?: number
}

/** Any number of candidate captions: at least one input, add and remove buttons. */
export function CaptionList({ captions, onChange, maxCaptions = 256 }: CaptionListProps) {
  function update(id: number, text: string) {
    onChange(captions.map((c) => (c.id === id ? { ...c, text } : c)))
  }
  function remove(id: number) {
    onChange(captions.filter((c) => c.id !== id))
  }
  function add() {
    onChange([...captions, newCaption()])
  }

  return (
    <fieldset className="captions" data-testid="caption-list">
      <legend>Captions</legend>
      <ol className="caption-inputs">
        {captions.map((c, i) => (
          <li key={c.id} className="caption-row" data-testid="caption-row">
            <label htmlFor={`caption-${c.id}`} className="visually-hidden">{`Caption ${i + 1}`}</label>
            <span className="caption-number" aria-hidden="true">
              {i + 1}
            </span>
            <input
              id={`caption-${c.id}`}
              type="text"
              value={c.text}
              placeholder={i === 0 ? 'e.g. a photo of a cat' : i === 1 ? 'e.g. a photo of a dog' : 'another caption'}
              onChange={(e) => update(c.id, e.target.value)}
              onKeyDown={(e) => {
                if (e.key === 'Enter' && i === captions.length - 1 && c.text.trim() && captions.length < maxCaptions) {
                  e.preventDefault()
                  add()
                }
              }}
            />
            <button
              type="button"
              className="icon-button"
              aria-label={`Remove caption ${i + 1}`}
              title="Remove caption"
              disabled={captions.length <= 1}
              onClick={() => remove(c.id)}
            >
              ×
            </button>
          </li>
        ))}
      </ol>
      <button type="button" className="secondary" onClick={add} disabled={captions.length >= maxCaptions}>
        + Add caption
      </button>
    </fieldset>
  )
}
