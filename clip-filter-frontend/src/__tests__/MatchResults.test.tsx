import { cleanup, render, screen, within } from '@testing-library/react'
import { afterEach, describe, expect, it } from 'vitest'
import { formatPercent, MatchResults } from '../components/MatchResults'
import type { MatchResponse } from '../lib/types'

const response: MatchResponse = {
  model: { name: 'clip-filter-tiny', pretrained: 'random', weights: 'random', dim: 64 },
  weights: 'random',
  texts: ['a cat', 'a dog', 'a car'],
  truncated: [false, false, true],
  results: [
    {
      index: 0,
      filename: 'cat.png',
      best_match: 'a dog',
      best_index: 1,
      scores: [0.21, 0.29, 0.154],
      probabilities: [0.25, 0.7, 0.05],
      clip_score: 0.725,
    },
    { index: 1, filename: 'broken.png', error: { code: 'corrupt_image', message: 'The image data is corrupt.' } },
  ],
}

afterEach(cleanup)

describe('MatchResults', () => {
  it('renders one card per image and one bar per caption', () => {
    render(<MatchResults response={response} />)
    const cards = screen.getAllByTestId('match-result')
    expect(cards).toHaveLength(2)
    const bars = within(cards[0]).getAllByTestId('caption-bar')
    expect(bars).toHaveLength(3)
    expect(within(cards[0]).getAllByRole('meter')).toHaveLength(3)
  })

  it('highlights the best caption and sizes bars by probability', () => {
    render(<MatchResults response={response} />)
    const card = screen.getAllByTestId('match-result')[0]
    expect(within(card).getByTestId('best-caption').textContent).toBe('a dog')
    const bars = within(card).getAllByTestId('caption-bar')
    expect(bars.map((b) => b.getAttribute('data-best'))).toEqual(['false', 'true', 'false'])
    expect(bars[1].className).toContain('best')
    const fills = bars.map((b) => (b.querySelector('.bar-fill') as HTMLElement).style.width)
    expect(fills).toEqual(['25%', '70%', '5%'])
    expect(within(bars[1]).getByTestId('probability').textContent).toBe('70.0%')
    expect(within(bars[1]).getByTestId('cosine').textContent).toBe('cos 0.290')
    expect(within(bars[2]).getByText('truncated')).toBeTruthy()
  })

  it('shows a bad image error inline in its card, without bars', () => {
    render(<MatchResults response={response} />)
    const card = screen.getAllByTestId('match-result')[1]
    expect(within(card).getByTestId('match-error').textContent).toContain('The image data is corrupt.')
    expect(within(card).queryAllByTestId('caption-bar')).toHaveLength(0)
    expect(within(card).queryByTestId('best-caption')).toBeNull()
  })

  it('flags random weights from the response', () => {
    render(<MatchResults response={response} />)
    expect(screen.getByTestId('response-weights').textContent).toMatch(/random weights/i)
    cleanup()
    render(<MatchResults response={{ ...response, weights: 'pretrained' }} />)
    expect(screen.queryByTestId('response-weights')).toBeNull()
  })

  it('formats probabilities', () => {
    expect(formatPercent(0.9993)).toBe('99.9%')
    expect(formatPercent(0.0004)).toBe('<0.1%')
    expect(formatPercent(0)).toBe('0.0%')
  })
})
