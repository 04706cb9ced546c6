import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { DropZone } from '../components/DropZone'
import { MatchPage } from '../components/MatchPage'
import { pngFile, stubFetch } from './helpers'

beforeEach(() => {
  let n = 0
  vi.stubGlobal('URL', Object.assign(URL, { createObjectURL: () => `blob:test/${++n}`, revokeObjectURL: () => {} }))
})

afterEach(() => {
  cleanup()
  vi.unstubAllGlobals()
})

function drop(target: Element, files: File[]) {
  fireEvent.drop(target, { dataTransfer: { files, items: [], types: ['Files'] } })
}

describe('DropZone', () => {
  it('is a focusable button that opens the file picker on Enter and Space', () => {
    const click = vi.spyOn(HTMLInputElement.prototype, 'click').mockImplementation(() => {})
    render(<DropZone label="Add images" inputLabel="Choose images" accept="image/*" onFiles={() => {}} />)
    const zone = screen.getByRole('button', { name: 'Add images' })
    expect(zone.getAttribute('tabindex')).toBe('0')
    fireEvent.keyDown(zone, { key: 'Enter' })
    fireEvent.keyDown(zone, { key: ' ' })
    expect(click).toHaveBeenCalledTimes(2)
    const input = screen.getByLabelText('Choose images') as HTMLInputElement
    expect(input.type).toBe('file')
    expect(input.multiple).toBe(true)
  })

  it('passes on accepted dropped files and reports the others', () => {
    const onFiles = vi.fn()
    const onRejected = vi.fn()
    render(
      <DropZone label="Zone" inputLabel="Pick" accept="image/*,.txt" onFiles={onFiles} onRejected={onRejected} />,
    )
    const txt = new File(['hello'], 'note.txt', { type: 'text/plain' })
    const pdf = new File(['%PDF'], 'doc.pdf', { type: 'application/pdf' })
    drop(screen.getByRole('button', { name: 'Zone' }), [pngFile('a.png'), txt, pdf])
    expect(onFiles.mock.calls[0][0].map((f: File) => f.name)).toEqual(['a.png', 'note.txt'])
    expect(onRejected.mock.calls[0][0].map((f: File) => f.name)).toEqual(['doc.pdf'])
  })
})

describe('MatchPage', () => {
  it('sends all images and captions in one multipart request and shows the results', async () => {
    let sent: FormData | null = null
    const { calls } = stubFetch({
      'POST /image_text_similarity_best_match': (init) => {
        sent = init?.body as FormData
        return {
          body: {
            model: { name: 'clip-filter-tiny', pretrained: 'random', weights: 'random', dim: 64 },
            weights: 'random',
            texts: ['a cat', 'a dog', 'a car'],
            truncated: [false, false, false],
            results: [
              { index: 0, filename: 'one.png', best_match: 'a car', best_index: 2, scores: [0.1, 0.2, 0.3], probabilities: [0.1, 0.2, 0.7], clip_score: 0.75 },
              { index: 1, filename: 'two.png', error: { code: 'corrupt_image', message: 'The image data is corrupt.' } },
            ],
          },
        }
      },
    })
    const onWeights = vi.fn()
    render(<MatchPage active modelReady onWeights={onWeights} />)
    const submit = () => screen.getByRole('button', { name: /^Match/ }) as HTMLButtonElement
    expect(submit().disabled).toBe(true)

    drop(screen.getByRole('button', { name: /add images/i }), [pngFile('one.png'), pngFile('two.png')])
    expect(screen.getAllByTestId('picked-image')).toHaveLength(2)
    expect(screen.getByRole('img', { name: 'one.png' })).toBeTruthy()

    fireEvent.click(screen.getByRole('button', { name: /add caption/i }))
    fireEvent.change(screen.getByLabelText('Caption 1'), { target: { value: 'a cat' } })
    fireEvent.change(screen.getByLabelText('Caption 2'), { target: { value: 'a dog' } })
    fireEvent.change(screen.getByLabelText('Caption 3'), { target: { value: ' a car ' } })
    expect(submit().textContent).toBe('Match 2 images')
    fireEvent.click(submit())

    await waitFor(() => expect(screen.getAllByTestId('match-result')).toHaveLength(2))
    expect(calls.filter((c) => c.method === 'POST')).toHaveLength(1)
    expect(calls[0].path).toBe('/image_text_similarity_best_match')
    const form = sent as unknown as FormData
    expect(form.getAll('images').map((f) => (f as File).name)).toEqual(['one.png', 'two.png'])
    expect(form.getAll('texts')).toEqual(['a cat', 'a dog', 'a car'])

    const [first, second] = screen.getAllByTestId('match-result')
    expect(within(first).getAllByTestId('caption-bar')).toHaveLength(3)
    expect(within(first).getByTestId('best-caption').textContent).toBe('a car')
    expect(within(second).getByTestId('match-error').textContent).toContain('corrupt')
    expect(onWeights).toHaveBeenCalledWith('random')
  })

  it('removes a picked image', () => {
    render(<MatchPage active modelReady />)
    drop(screen.getByRole('button', { name: /add images/i }), [pngFile('one.png'), pngFile('two.png')])
    fireEvent.click(screen.getByRole('button', { name: 'Remove one.png' }))
    const left = screen.getAllByTestId('picked-image')
    expect(left).toHaveLength(1)
    expect(left[0].textContent).toContain('two.png')
  })

  it('takes images pasted from the clipboard, and skips non-images', () => {
    render(<MatchPage active modelReady />)
    const pasted = new File([new Uint8Array([1])], 'image.png', { type: 'image/png' })
    const event = new Event('paste', { bubbles: true, cancelable: true }) as Event & { clipboardData: unknown }
    event.clipboardData = { files: [pasted], items: [] }
    fireEvent(document, event)
    const picked = screen.getAllByTestId('picked-image')
    expect(picked).toHaveLength(1)
    expect(picked[0].textContent).toMatch(/pasted-\d+\.png/)
  })

  it('shows the API error message when the request fails', async () => {
    stubFetch({
      'POST /image_text_similarity_best_match': () => ({
        status: 503,
        body: { error: { code: 'model_unavailable', message: 'The model is not loaded.', fix: 'Wait for it.' } },
      }),
    })
    render(<MatchPage active modelReady={false} />)
    drop(screen.getByRole('button', { name: /add images/i }), [pngFile('one.png')])
    fireEvent.change(screen.getByLabelText('Caption 1'), { target: { value: 'a cat' } })
    fireEvent.click(screen.getByRole('button', { name: /^Match/ }))
    const alert = await screen.findByTestId('match-request-error')
    expect(alert.textContent).toBe('The model is not loaded. Wait for it.')
    expect(alert.getAttribute('role')).toBe('alert')
  })
})
