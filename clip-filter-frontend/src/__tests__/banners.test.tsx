import { cleanup, render, screen, waitFor } from '@testing-library/react'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { App } from '../App'
import { Banners } from '../components/Banners'
import { modelBanners } from '../lib/banners'
import type { Info } from '../lib/types'
import { readyInfo, stubFetch } from './helpers'

const ready = readyInfo as Info

afterEach(() => {
  cleanup()
  vi.unstubAllGlobals()
})

describe('modelBanners', () => {
  it('is empty for a ready model with pretrained weights', () => {
    expect(modelBanners({ ...ready, weights: 'pretrained' }, null)).toEqual([])
  })

  it('warns about random weights from /info', () => {
    const banners = modelBanners(ready, null)
    expect(banners.map((b) => b.id)).toEqual(['random'])
    expect(banners[0].title).toMatch(/random weights: scores are meaningless/i)
    expect(banners[0].role).toBe('alert')
  })

  it('warns about random weights from a response even when /info said otherwise', () => {
    expect(modelBanners({ ...ready, weights: 'pretrained' }, null, 'random').map((b) => b.id)).toEqual(['random'])
  })

  it('shows the reason and the fix when the model failed', () => {
    const banners = modelBanners(
      { state: 'failed', reason: 'no network to download ViT-B-32/openai', fix: 'set CLIP_PRETRAINED to a checkpoint' },
      null,
    )
    expect(banners).toHaveLength(1)
    expect(banners[0]).toMatchObject({
      id: 'unavailable',
      role: 'alert',
      detail: 'no network to download ViT-B-32/openai',
      fix: 'set CLIP_PRETRAINED to a checkpoint',
    })
  })

  it('says the model is loading, politely', () => {
    expect(modelBanners({ state: 'loading' }, null)).toMatchObject([{ id: 'loading', role: 'status' }])
  })

  it('says when the API cannot be reached', () => {
    expect(modelBanners(null, 'Cannot reach the API')).toMatchObject([{ id: 'unreachable', role: 'alert' }])
  })
})

describe('Banners', () => {
  it('renders each banner with its role, reason and fix', () => {
    render(<Banners banners={modelBanners({ state: 'failed', reason: 'bad checksum', fix: 'check the file', weights: 'random' }, null)} />)
    const alerts = screen.getAllByRole('alert')
    expect(alerts).toHaveLength(2)
    expect(screen.getByTestId('banner-unavailable').textContent).toContain('bad checksum')
    expect(screen.getByTestId('banner-unavailable').textContent).toContain('check the file')
    expect(screen.getByTestId('banner-random')).toBeTruthy()
  })
})

describe('App banners from GET /info', () => {
  it('shows the random-weights banner', async () => {
    stubFetch({ 'GET /info': () => ({ body: readyInfo }) })
    render(<App />)
    await waitFor(() => expect(screen.getByTestId('banner-random')).toBeTruthy())
    expect(screen.getByTestId('banner-random').getAttribute('role')).toBe('alert')
    expect(screen.getByTestId('model-summary').textContent).toContain('clip-filter-tiny')
  })

  it('shows the unavailable banner with reason and fix, and no random banner for real weights', async () => {
    stubFetch({
      'GET /info': () => ({
        body: { state: 'failed', reason: 'weights not in the cache and no hub', fix: 'copy a checkpoint', weights: 'pretrained' },
      }),
    })
    render(<App />)
    await waitFor(() => expect(screen.getByTestId('banner-unavailable')).toBeTruthy())
    expect(screen.getByRole('alert').textContent).toContain('weights not in the cache and no hub')
    expect(screen.getByRole('alert').textContent).toContain('copy a checkpoint')
    expect(screen.queryByTestId('banner-random')).toBeNull()
  })
})
